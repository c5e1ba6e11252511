"""DRaFT's config (arXiv 2309.17400): a differentiable reward backpropagated through the last K sampling
steps (DRaFT-K), through one step with re-noised copies (DRaFT-LV), or through every step (full); and two
relatives on the same code: ReFL (arXiv 2304.05977), one randomly chosen late step predicting x_0, and
AlignProp (arXiv 2310.03739), a random truncation K at each optimizer step."""

from dataclasses import dataclass
from typing import ClassVar, Literal

from rlft.configs.checks import check, check_divides, check_micro_batch, refuse_labels
from rlft.configs.sampling import SamplingConfig
from rlft.rewards.registry import get_reward


@dataclass(frozen=True)
class DRaFTConfig(SamplingConfig):
    reward: str = "smoothness"
    """Differentiable reward backpropagated through the last steps of sampling: smoothness, brightness,
    color-alignment-soft, aesthetic, imagereward, pickscore (hub weights), aesthetic:<folder>,
    imagereward:<folder> or pickscore:<folder> (local weights)."""
    epochs: int = 4
    """Sampling-and-training rounds (4 raise the tiny default's evaluation reward beyond 8 standard errors,
    and the reversed twin's falls, on seeds 0-2; docs/learning.md)."""
    variant: Literal["draft-k", "draft-lv", "full", "refl", "alignprop"] = "draft-k"
    """'draft-k': gradient through the last k steps; 'draft-lv': k = 1 with lv_copies re-noised copies;
    'full': gradient through every step; 'refl' (ReFL-style): sample without gradient to one of the last k
    steps chosen at random, and score the x_0 that one step with gradient predicts there; 'alignprop'
    (AlignProp-style): gradient through the last K steps, K drawn from 1..k at every optimizer step."""
    k: int | None = None
    """The last k steps hold the gradient (1..num_steps). Unset: 1 for draft-k; a quarter of num_steps for
    refl and alignprop (ReFL picks one of steps 30-39 of 40; AlignProp truncates at 5-15 of 50)."""
    lv_copies: int = 2
    """Re-noised copies of the final sample for draft-lv (the paper's n; 2 by default)."""
    batch_size: int = 8
    """Samples per optimizer step."""
    micro_batch: int | None = None
    """Samples per forward/backward pass (draft-lv: each with its lv_copies): each optimizer step of
    batch_size samples accumulates its gradient over batch_size / micro_batch passes (per train worker, over
    its share of the batch), to fit a GPU's memory; the same step to rounding. Default: the whole batch at
    once."""
    steps_per_epoch: int = 4
    """Optimizer steps per epoch, each on a fresh batch."""
    eta: float = 0.0
    """DDIM stochasticity, or for flow-matching models the SDE's noise level (0: deterministic sampling, the
    ODE's Euler steps for SD3, as DRaFT uses)."""
    lr: float = 1e-2
    """AdamW learning rate (the paper uses 2e-4 on SD 1.5 with rank-8 LoRA)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_labels(self.reward, "DRaFT needs a differentiable reward")
        get_reward(self.reward, differentiable=True)
        if self.k is not None:
            check(1 <= self.k <= self.num_steps, "k", self.k, f"in 1..{self.num_steps} (num_steps)")
        check(self.lv_copies >= 1, "lv_copies", self.lv_copies, "at least 1")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")
        check_divides(self.batch_size, self.train_workers)
        check_micro_batch(self.micro_batch, self.batch_size // self.train_workers)
        check(self.steps_per_epoch >= 1, "steps_per_epoch", self.steps_per_epoch, "at least 1")
        check(self.eta >= 0, "eta", self.eta, ">= 0")
        check(self.lr > 0, "lr", self.lr, "positive")

    algorithm: ClassVar[str] = "draft"

    def describe(self) -> tuple[str, str]:
        """(the algorithm's name, an epoch's work) for the job's first line."""
        name = {
            "refl": f"ReFL-style DRaFT (one of the last {self.steps_with_grad} steps, x_0 predicted)",
            "alignprop": f"AlignProp-style DRaFT (K drawn from 1..{self.steps_with_grad})",
        }.get(self.variant, f"DRaFT ({self.variant}, K={self.steps_with_grad})")
        return name, f"{self.steps_per_epoch} steps x {self.batch_size} samples"

    @property
    def prompts_per_epoch(self) -> int:
        """One prompt per sample of the epoch's optimizer steps."""
        return self.batch_size * self.steps_per_epoch

    def sampling_settings(self) -> dict:
        """`sample_trajectories` arguments: DRaFT-K and full DRaFT stop where the gradient starts; DRaFT-LV
        needs the final sample."""
        skip_last = 0 if self.variant == "draft-lv" else self.steps_with_grad
        return self.common_sampling() | dict(
            group_size=1, with_logprob=False, skip_last=skip_last, last_only=True
        )

    @property
    def images_per_epoch(self) -> int:
        """Images the sampler draws per epoch (DRaFT-LV's re-noised copies are not new images)."""
        return self.prompts_per_epoch

    @property
    def steps_with_grad(self) -> int:
        """K: how many final steps the sampler leaves to the learner (the gradient runs through all of them,
        a random last 1..K of them for alignprop, one of them for refl)."""
        if self.variant in ("draft-lv", "full"):
            return {"draft-lv": 1, "full": self.num_steps}[self.variant]
        if self.k is not None:
            return self.k
        return 1 if self.variant == "draft-k" else max(1, self.num_steps // 4)
