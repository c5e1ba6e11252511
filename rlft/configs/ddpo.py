"""DDPO's config (Black et al., arXiv 2305.13301): samples of each prompt from independent noise, rewards
turned into advantages, and the PPO-clip loss on every denoising step's log-probability ratio against the
policy that sampled it. The shared baseline D3PO and DRaFT are compared with
(benchmarks/science/learning.py)."""

from dataclasses import dataclass
from typing import ClassVar, Literal

from rlft.configs.checks import check, check_divides, check_micro_batch, refuse_labels
from rlft.configs.sampling import SamplingConfig
from rlft.rewards.registry import get_reward


@dataclass(frozen=True)
class DDPOConfig(SamplingConfig):
    reward: str = "jpeg-compressibility"
    """Reward to maximise (one): jpeg-compressibility, jpeg-incompressibility, color-alignment, smoothness,
    brightness, aesthetic, imagereward, pickscore (hub weights), aesthetic:<folder>, imagereward:<folder> or
    pickscore:<folder>."""
    epochs: int = 12
    """Sampling-and-training rounds."""
    num_steps: int = 10
    """DDIM denoising steps per sample (the paper uses 50 on SD 1.5)."""
    prompts_per_epoch: int = 16
    """Prompts drawn per epoch; each is sampled `samples_per_prompt` times (64 images, as D3PO's default)."""
    samples_per_prompt: int = 4
    """Samples of each drawn prompt, each from its own initial noise (see `shared_noise`)."""
    shared_noise: bool = False
    """Samples of one prompt share their initial noise x_T, as D3PO's groups do, so that their rewards differ
    only by the denoising steps, the actions the advantages credit. Off: DDPO's independent samples."""
    advantages: Literal["per-prompt", "group"] = "per-prompt"
    """'per-prompt': DDPO's statistics, each prompt's last `stat_buffer` rewards across epochs (the batch's
    until it holds `stat_min_count`); 'group': the epoch's samples of the prompt only (GRPO's advantages)."""
    stat_buffer: int = 16
    """Rewards kept per prompt for 'per-prompt' advantages (ddpo-pytorch: 16)."""
    stat_min_count: int = 4
    """Rewards a prompt needs before its own statistics replace the batch's. ddpo-pytorch uses 16 for 45
    prompts that recur every epoch; of the 1,568 'shapes' captions few recur, so 4 (samples_per_prompt)
    lets each prompt's own samples set its baseline from its first epoch. With the batch's statistics the
    prompts' differences in JPEG size swamp the samples' (measured: no learning; docs/learning.md)."""
    eta: float = 1.0
    """DDIM stochasticity, or for flow-matching models (SD3) the SDE's noise level; must be > 0, since the
    loss needs each step's log-probability."""
    clip_range: float = 0.2
    """PPO clip range on the ratio policy/sampler. ddpo-pytorch uses 1e-4 at lr 3e-4 on SD 1.5; here one
    optimizer step moves a step's log-probability by about 1e-3 to 1e-2, so 1e-4 clips nearly every item
    after an epoch's first step (measured: no learning; docs/learning.md)."""
    adv_clip_max: float = 5.0
    """Advantages are clamped to [-adv_clip_max, adv_clip_max] (ddpo-pytorch: 5)."""
    timestep_fraction: float = 1.0
    """Fraction of each sample's denoising steps trained, chosen at random per sample (ddpo-pytorch: 1.0)."""
    skip_final_steps: int = 0
    """The last denoising steps that are not trained (as D3PO's): on the tiny model at 10 steps the
    second-to-last step's small noise gives its log-probability about 8 times the gradient of any other
    step's (docs/learning.md)."""
    inner_epochs: int = 1
    """Passes over an epoch's samples, each in a new order (ddpo-pytorch: 1)."""
    lr: float = 2e-3
    """AdamW learning rate (ddpo-pytorch uses 3e-4 on SD 1.5; at 6e-3, D3PO's, the tiny model drifted
    whatever the reward's sign; docs/learning.md)."""
    batch_size: int = 32
    """(sample, timestep) items per optimizer step."""
    micro_batch: int | None = None
    """Items per forward/backward pass: each optimizer step of batch_size items accumulates its gradient over
    batch_size / micro_batch passes (per train worker, over its share of the batch), to fit a GPU's memory;
    the same step to rounding. Default: the whole batch at once."""

    algorithm: ClassVar[str] = "ddpo"
    can_pipeline: ClassVar[bool] = True

    def describe(self) -> tuple[str, str]:
        """(the algorithm's name, an epoch's work) for the job's first line."""
        noise = "sharing x_T" if self.shared_noise else "independent"
        return "DDPO", f"{self.prompts_per_epoch} prompts x {self.samples_per_prompt} samples ({noise})"

    @property
    def images_per_epoch(self) -> int:
        return self.prompts_per_epoch * self.samples_per_prompt

    @property
    def steps_trained(self) -> int:
        """Denoising steps trained per sample: at least one."""
        return max(1, round((self.num_steps - self.skip_final_steps) * self.timestep_fraction))

    def sampling_settings(self) -> dict:
        """`sample_trajectories` arguments: every latent, and the sampler's log-probabilities (the ratio's
        denominator). Without `shared_noise` every sample is its own group, from its own noise."""
        group_size = self.samples_per_prompt if self.shared_noise else 1
        return self.common_sampling() | dict(
            group_size=group_size, with_logprob=True, last_only=False, keep_log_probs=True
        )

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_labels(self.reward, "DDPO trains on a reward")
        check("," not in self.reward, "reward", self.reward, "one reward (DDPO's advantage needs one number)")
        get_reward(self.reward)
        check(self.prompts_per_epoch >= 1, "prompts_per_epoch", self.prompts_per_epoch, "at least 1")
        check(self.samples_per_prompt >= 1, "samples_per_prompt", self.samples_per_prompt, "at least 1")
        check(
            self.advantages == "per-prompt" or self.samples_per_prompt >= 2,
            "samples_per_prompt",
            self.samples_per_prompt,
            "at least 2 with group advantages (one sample has nothing to be compared with)",
        )
        check(self.stat_buffer >= 1, "stat_buffer", self.stat_buffer, "at least 1")
        check(self.stat_min_count >= 1, "stat_min_count", self.stat_min_count, "at least 1")
        check(
            self.eta > 0,
            "eta",
            self.eta,
            "> 0 (DDPO needs log-probabilities; at 0 a DDIM or flow step is deterministic)",
        )
        check(0 < self.clip_range < 1, "clip_range", self.clip_range, "in (0, 1)")
        check(self.adv_clip_max > 0, "adv_clip_max", self.adv_clip_max, "positive")
        check(0 < self.timestep_fraction <= 1, "timestep_fraction", self.timestep_fraction, "in (0, 1]")
        check(
            0 <= self.skip_final_steps < self.num_steps,
            "skip_final_steps",
            self.skip_final_steps,
            f"0 to num_steps - 1 ({self.num_steps - 1})",
        )
        check(self.inner_epochs >= 1, "inner_epochs", self.inner_epochs, "at least 1")
        check(self.lr > 0, "lr", self.lr, "positive")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")
        check_divides(self.batch_size, self.train_workers)
        check_micro_batch(self.micro_batch, self.batch_size // self.train_workers)
