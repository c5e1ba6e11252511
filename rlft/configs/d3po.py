"""D3PO's config (arXiv 2311.13231): groups sharing their initial noise, ranked by a reward, trained with
the per-step DPO loss against the frozen reference. Training on people's labels has its own config
(rlft/feedback/labels_config.py)."""

from dataclasses import dataclass
from typing import ClassVar

from rlft.configs.checks import check, check_divides, check_micro_batch
from rlft.configs.sampling import SamplingConfig
from rlft.rewards.registry import get_reward

HUMAN = "human:"


@dataclass(frozen=True)
class D3POConfig(SamplingConfig):
    reward: str = "jpeg-compressibility"
    """Reward whose order within each group decides the preferred sample: jpeg-compressibility,
    jpeg-incompressibility, smoothness, brightness, color-alignment, aesthetic, imagereward, pickscore (hub
    weights), aesthetic:<folder>, imagereward:<folder> or pickscore:<folder> (local weights); several joined
    by commas (a,b): a sample is preferred only when it is at least as good on every reward and better on one.
    People's labels: jobs/d3po_labels.py."""
    epochs: int = 12
    """Sampling-and-training rounds (12 raise the tiny default's evaluation reward beyond noise, forward and
    not reversed, on seeds 0-2; docs/learning.md)."""
    num_steps: int = 10
    """DDIM denoising steps per sample (10 keeps the tiny default fast; the paper uses 20 on SD 1.5)."""
    pairs_per_epoch: int = 16
    """Groups sampled per epoch, each from one prompt and one shared initial noise."""
    group_size: int = 4
    """Samples per group sharing x_T; which pairs within a group train is set by `pairs`."""
    pairs: str = "best-worst"
    """Pairs trained per group: best-worst (the group's best sample over its worst, one pair per group: the
    widest margin; needs one reward) or all (every pair with different rewards, the paper's rule). On the
    tiny default, best-worst of 4 raised the evaluation reward beyond 3 standard errors on seeds 0-2, every
    pair of 2 on two of them (docs/learning.md)."""
    skip_final_steps: int = 0
    """The last denoising steps that are not trained. On the tiny model at 10 steps the second-to-last draws
    its noise with sigma 0.041 against 0.26-0.78 before while the model output moves its mean as much, so
    its log-probability's gradient is about 8 times any other step's (docs/learning.md)."""
    eta: float = 1.0
    """DDIM stochasticity, or for flow-matching models (SD3) the SDE's noise level (Flow-GRPO uses 0.7); must
    be > 0, since the loss needs each step's log-probability."""
    objective: str = "steps"
    """What D3PO compares the pair's members on: steps (the paper's: each recorded denoising step's
    log-probability under the policy and the reference) or noised (Diffusion-DPO's, arXiv 2311.12908: both
    final latents noised to one timestep with one noise, and the policy's denoising error against the
    reference's, `noised_draws` draws per pair)."""
    noised_draws: int = 10
    """With objective noised: (timestep, noise) draws per pair, each a training item (10: as many items as
    the steps objective's at 10 steps)."""
    beta: float | None = None
    """DPO temperature on the log-ratio difference. Default: 0.1 for steps (the paper's), 2500 for noised
    (Diffusion-DPO's 5000 on SD 1.5, halved as its loss halves it)."""
    clip: float = 0.1
    """Ratios policy/reference are clamped to [1 - clip, 1 + clip] (steps only)."""
    one_sided_clip: bool = False
    """Clamp a ratio only where its step already moved the way the preference asks (as PPO clips): a
    preferred step past 1 + clip, a rejected one below 1 - clip. The two-sided clamp of the official code
    also stops the gradient of a step that moved the wrong way."""
    kl_coef: float = 0.0
    """Weight of the KL term to the reference, mean(log r^2 / 2) over both members' steps: pulls the policy
    back towards the reference however far it went, where the clamp stops all gradient."""
    lr: float = 6e-3
    """AdamW learning rate (the paper uses 3e-5 on SD 1.5; the tiny model needs far more, but at 1e-2 the
    policy's ratios to the frozen reference leave the clip range within a few epochs, the clamp stops
    their gradient, and the result depends on the item order; docs/learning.md)."""
    batch_size: int = 16
    """(pair, timestep) items per optimizer step."""
    margin_after_every_step: bool = False
    """Measure the implicit reward margin and preference accuracy on a step's items after every optimizer
    step (margin_before -> margin_after, averaged over the epoch), not only after the epoch's first: one
    more forward pass of the policy per step instead of per epoch (benchmarks/science/d3po_diagnostics.py
    sets it)."""
    micro_batch: int | None = None
    """Items per forward/backward pass: each optimizer step of batch_size items accumulates its gradient over
    batch_size / micro_batch passes (per train worker, over its share of the batch), to fit a GPU's memory;
    the same step to rounding. Default: the whole batch at once."""

    @property
    def dpo_beta(self) -> float:
        """beta, or the objective's default."""
        return self.beta if self.beta is not None else (2500.0 if self.objective == "noised" else 0.1)

    algorithm: ClassVar[str] = "d3po"
    can_pipeline: ClassVar[bool] = True

    def describe(self) -> tuple[str, str]:
        """(the algorithm's name, an epoch's work) for the job's first line."""
        return "D3PO", f"{self.pairs_per_epoch} groups of {self.group_size}"

    @property
    def prompts_per_epoch(self) -> int:
        """One prompt per group."""
        return self.pairs_per_epoch

    @property
    def images_per_epoch(self) -> int:
        return self.pairs_per_epoch * self.group_size

    def sampling_settings(self) -> dict:
        """`sample_trajectories` arguments (see rlft/epoch.py's `sample_chunk`): every latent and log-prob."""
        return self.common_sampling() | dict(group_size=self.group_size, with_logprob=True, last_only=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        folder = self.reward.removeprefix(HUMAN)
        check(
            not self.reward.startswith(HUMAN),
            "reward",
            self.reward,
            f"train on people's labels with jobs/d3po_labels.py --batch {folder or '<folder>'}",
        )
        get_reward(self.reward)
        check(self.pairs_per_epoch >= 1, "pairs_per_epoch", self.pairs_per_epoch, "at least 1")
        check(self.pairs in ("all", "best-worst"), "pairs", self.pairs, "all or best-worst")
        check(
            self.pairs == "all" or "," not in self.reward,
            "pairs",
            self.pairs,
            "best-worst needs one reward (several rewards have no single best sample)",
        )
        check(
            0 <= self.skip_final_steps < self.num_steps,
            "skip_final_steps",
            self.skip_final_steps,
            f"0 to num_steps - 1 ({self.num_steps - 1})",
        )
        check(self.group_size >= 2, "group_size", self.group_size, "at least 2 (D3PO compares samples)")
        check(
            self.eta > 0,
            "eta",
            self.eta,
            "> 0 (D3PO needs log-probabilities; at 0 a DDIM or flow step is deterministic)",
        )
        check(self.objective in ("steps", "noised"), "objective", self.objective, "steps or noised")
        check(self.noised_draws >= 1, "noised_draws", self.noised_draws, "at least 1")
        check(self.beta is None or self.beta > 0, "beta", self.beta, "positive")
        check(0 < self.clip < 1, "clip", self.clip, "in (0, 1)")
        check(self.kl_coef >= 0, "kl_coef", self.kl_coef, "0 or more")
        check(self.lr > 0, "lr", self.lr, "positive")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")
        check_divides(self.batch_size, self.train_workers)
        check_micro_batch(self.micro_batch, self.batch_size // self.train_workers)
