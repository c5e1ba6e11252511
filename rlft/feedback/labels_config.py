"""The config of `jobs/d3po_labels.py`: D3PO on the pairs people labelled in a batch folder.

Only the fields that matter for it. What the batch fixes is read from its manifest, not asked for: the
model, the denoising steps, guidance, eta and resolution (training recomputes the sampler's
log-probabilities) and, when the batch was sampled from an adapter, that adapter's LoRA shape (training
continues it). The resolved values are fields of the config, so MLflow logs exactly what is trained.
"""

from dataclasses import dataclass, field
from typing import ClassVar

from rlft.configs.base import RunConfig
from rlft.configs.checks import check, check_divides, check_micro_batch
from rlft.feedback.batch_folder import read_manifest
from rlft.zoo.names import BUILTIN_MODELS, DEFAULT_LORA_TARGETS


@dataclass(frozen=True)
class D3POLabelsConfig(RunConfig):
    batch: str = field(kw_only=True)
    """The labelled batch folder: sampled by jobs/sample_groups.py, labelled on jobs/label.py's page."""
    epochs: int = 2
    """Passes over the labelled pairs, each checkpointed (the same --run-name again resumes after the last);
    two, as in the slow test that shows D3PO learning a person's rule from their labels."""
    seed: int | None = None
    """Seeds the LoRA init and the shuffles; default: the batch's seed (a built-in model's weights come from
    it, so for those it must be the batch's)."""
    lora_rank: int | None = None
    """LoRA rank; default: that of the adapter the batch was sampled from (training continues it), else 4."""
    lora_alpha: float | None = None
    """LoRA alpha (scale alpha/rank); default: the start adapter's, else equal to the rank."""
    lora_targets: tuple[str, ...] | None = None
    """UNet module names that get LoRA layers; default: the start adapter's, else the attention
    projections."""
    beta: float = 0.1
    """DPO temperature on the log-ratio difference."""
    clip: float = 0.1
    """Ratios policy/reference are clamped to [1 - clip, 1 + clip]."""
    one_sided_clip: bool = False
    """Clamp a ratio only where its step already moved the way the preference asks (as PPO clips): a
    preferred step past 1 + clip, a rejected one below 1 - clip. The two-sided clamp of the official code
    also stops the gradient of a step that moved the wrong way."""
    kl_coef: float = 0.0
    """Weight of the KL term to the reference, mean(log r^2 / 2) over both members' steps: pulls the policy
    back towards the reference however far it went, where the clamp stops all gradient."""
    lr: float = 6e-3
    """AdamW learning rate (as jobs/d3po.py's tiny default; the paper uses 3e-5 on SD 1.5)."""
    batch_size: int = 16
    """(pair, timestep) items per optimizer step."""
    micro_batch: int | None = None
    """Items per forward/backward pass: each optimizer step of batch_size items accumulates its gradient over
    batch_size / micro_batch passes (per train worker, over its share of the batch), to fit a GPU's memory;
    the same step to rounding. Default: the whole batch at once."""
    # Fixed by the batch (read from its manifest, logged with the rest):
    model: str = field(init=False, default="")
    num_steps: int = field(init=False, default=0)
    guidance_scale: float = field(init=False, default=0.0)
    eta: float = field(init=False, default=0.0)
    resolution: int | None = field(init=False, default=None)

    algorithm: ClassVar[str] = "d3po"  # its learner: D3PO's (rlft/algorithms/registry.py)
    objective: ClassVar[str] = "steps"  # the labelled batch records every step
    margin_after_every_step: ClassVar[bool] = False

    @property
    def dpo_beta(self) -> float:
        return self.beta

    def __post_init__(self) -> None:
        try:
            manifest, _ = read_manifest(self.batch)
        except ValueError as error:
            raise ValueError(f"batch={self.batch!r} is not allowed: {error}") from None
        settings = manifest["settings"]
        fixed = dict(
            model=manifest["model"],
            num_steps=settings["num_steps"],
            guidance_scale=settings["guidance_scale"],
            eta=settings["eta"],
            resolution=settings.get("resolution"),  # batches written before it was recorded: the model's
        )
        if self.seed is None:
            fixed["seed"] = manifest["seed"]
        elif manifest["model"] in BUILTIN_MODELS:
            weights = f"{manifest['model']}'s weights come from it"
            allowed = f"{manifest['seed']}, the seed {self.batch!r} was sampled with ({weights})"
            check(self.seed == manifest["seed"], "seed", self.seed, allowed)
        fixed |= self.lora_shape(manifest.get("adapter"))
        for name, value in fixed.items():
            object.__setattr__(self, name, value)
        super().__post_init__()
        check(self.beta > 0, "beta", self.beta, "positive")
        check(0 < self.clip < 1, "clip", self.clip, "in (0, 1)")
        check(self.kl_coef >= 0, "kl_coef", self.kl_coef, "0 or more")
        check(self.lr > 0, "lr", self.lr, "positive")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")
        check_divides(self.batch_size, self.train_workers)
        check_micro_batch(self.micro_batch, self.batch_size // self.train_workers)

    def lora_shape(self, adapter: str | None) -> dict:
        """The LoRA fields resolved: the start adapter's shape (a different one given is refused), else the
        given values or the defaults."""
        given = dict(lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, lora_targets=self.lora_targets)
        if adapter is None:
            defaults = dict(lora_rank=4, lora_alpha=None, lora_targets=DEFAULT_LORA_TARGETS)
            return {k: defaults[k] if v is None else v for k, v in given.items()}
        check(
            not self.full_finetune,
            "full_finetune",
            True,
            f"False: {self.batch!r} continues adapter {adapter!r}",
        )
        from rlft.diffusion.adapters import adapter_lora_shape  # brings diffusers and peft: only when needed

        shape = adapter_lora_shape(adapter)
        for name, value in given.items():
            wanted = tuple(sorted(value)) if name == "lora_targets" and value else value
            allowed = f"{shape[name]!r}, the shape of {adapter!r}, which the batch was sampled from"
            check(wanted is None or wanted == shape[name], name, value, allowed)
        return shape

    def trained_on(self) -> tuple[str, str]:
        """(what the run learns from, which), for the job's first line and MLflow's tags."""
        return "batch", self.batch

    def describe(self) -> tuple[str, str]:
        """(the algorithm's name, an epoch's work) for the job's first line."""
        return "D3PO on people's labels", f"passes over the labelled pairs of {self.batch!r}"
