"""Run configuration: one frozen dataclass per algorithm, every field documented, checked on construction.

`tyro` turns these into `--help` and flags. A bad value raises ValueError naming the field and what is
allowed, before any model is built. Defaults run the embedded tiny model on a CPU in minutes; the paper
values for Stable Diffusion 1.5 are noted where they differ.
"""

import dataclasses
import os
from dataclasses import dataclass
from typing import ClassVar, Literal

from rlft.diffusion.models import check_model_name
from rlft.diffusion.policy import DEFAULT_LORA_TARGETS
from rlft.prompts import load_prompts
from rlft.rewards.registry import get_reward
from rlft.runs.storage import ALLOWED, storage_problem


def _check(ok: bool, field: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{field}={value!r} is not allowed: {allowed}")


HUMAN = "human:"


def _check_divides(batch_size: int, workers: int) -> None:
    allowed = f"a multiple of train_workers ({workers}): each worker takes an equal share of a batch"
    _check(batch_size % workers == 0, "batch_size", batch_size, allowed)


@dataclass(frozen=True)
class CommonConfig:
    model: str = "tiny"
    """'tiny' (offline, 32x32), 'sd15-random' (SD 1.5 shape, random weights), a hub id or a folder."""
    epochs: int = 8
    """Sampling-and-training rounds."""
    seed: int = 0
    """Seeds the tiny model's weights, the LoRA init, the noise and the shuffles."""
    prompts: str = "shapes"
    """Prompts: a built-in set (shapes, the tiny model's world; animals, simple-animals, unseen-animals,
    everyday-objects, animal-activities; see rlft/prompts.py) or a path to a text file, one prompt per line
    (blank lines and # lines skipped)."""
    eval_prompts: str = "shapes-eval"
    """Prompts of the fixed evaluation set (a built-in set or a file, as --prompts), taken in order; the
    default holds captions that --prompts shapes never draws."""
    eval_images: int = 64
    """Images in the fixed evaluation set: one per evaluation prompt (cycling), each with fixed noise."""
    eval_every: int = 1
    """Score the policy on the fixed evaluation set every this many epochs (and at the last); 0: never."""
    reverse_preferences: bool = False
    """Train toward the reward's opposite (D3PO: every preference swapped; DRaFT: the reward descended) while
    logging the true reward: the control that shows learning comes from the reward, not from drift."""
    num_steps: int = 20
    """DDIM denoising steps per sample."""
    guidance_scale: float = 5.0
    """Classifier-free guidance weight (1 turns guidance off)."""
    resolution: int | None = None
    """Image side in pixels; default: the model's own (32 for tiny, 512 for SD 1.5)."""
    lora_rank: int = 4
    """LoRA rank on the UNet attention projections."""
    lora_alpha: float | None = None
    """LoRA alpha (scale alpha/rank); default: equal to the rank."""
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    """UNet module names (suffixes) that get LoRA layers: the attention projections by default."""
    full_finetune: bool = False
    """Train every UNet weight instead of a LoRA adapter (the reference is then a frozen copy)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run: 'auto' picks CUDA when torch sees it."""
    threads: int | None = None
    """CPU threads for torch; default: torch's own choice here, every core in Ray actors and workers (Ray
    would give a 1-CPU actor one thread)."""
    run_name: str | None = None
    """Names the run's folder (runs_dir/run_name) and its MLflow run; the same name again resumes the run.
    Default: the algorithm and the start time."""
    runs_dir: str = "runs"
    """Folder holding one subfolder per run: its checkpoint and final adapter."""
    storage: str | None = dataclasses.field(default_factory=lambda: os.environ.get("RLFT_STORAGE") or None)
    """Storage every node shares (s3://bucket/prefix, gs://bucket/prefix, or a mounted folder): each epoch's
    checkpoint and the final adapter are also copied to <storage>/<run_name>/, and a run whose own folder
    lacks the newest checkpoint (a new head node, a lost disk) resumes from there; give --run-name to
    resume. Default: the RLFT_STORAGE environment variable (cluster.yaml sets it), else none; --storage None
    turns it off."""
    track: bool = True
    """Log to MLflow (MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME; default: sqlite mlflow.db here)."""
    image_every: int = 2
    """Log an image grid with its prompts every this many epochs (and at the last)."""
    sample_batch: int = 8
    """Prompts per sampler call (D3PO: groups); an epoch's prompts are cut into chunks of this size."""
    shuffle: bool = True
    """Train on the epoch's items in a seeded random order (a Ray Data global shuffle under Ray);
    --no-shuffle keeps the order they were made in."""
    ray: bool = True
    """Run on Ray: sampler and scorer actors, a Ray Data shuffle, Ray Train workers. --no-ray runs the same
    epochs in this one process (same numbers with one sampler, one train worker and --no-shuffle)."""
    ray_address: str | None = None
    """Ray cluster to join; default: RAY_ADDRESS, else a cluster started on this machine by `ray start`,
    else a new local Ray for this job."""
    samplers: int = 1
    """Sampler actors; each holds the pipeline and the current LoRA, and takes chunks in turn."""
    sampler_gpus: float = 0.0
    """GPUs per sampler (a fraction shares a GPU; 0: a CPU actor)."""
    scorers: int = 1
    """Scorer actors turning images into rewards."""
    scorer_gpus: float = 0.0
    """GPUs per scorer (a fraction shares a GPU; 0: a CPU actor)."""
    train_workers: int = 1
    """Ray Train workers (data parallel: each takes an equal share of the items; gradients are averaged)."""
    worker_gpus: float = 0.0
    """GPUs per train worker (0: CPU workers)."""
    actor_cpus: float = 1.0
    """CPUs each sampler, scorer and train worker asks Ray for."""
    sampler_resource: str | None = None
    """A custom Ray resource each sampler also asks one unit of, to keep samplers on the node types that
    offer it (cluster.yaml's `resources`); default: none."""
    worker_resource: str | None = None
    """A custom Ray resource each train worker also asks one unit of; default: none."""
    ready_timeout_s: float = 900.0
    """Seconds to wait for the samplers, scorers and train workers to start, or to start again after a
    node is lost, before the run fails (an autoscaler needs minutes to add a GPU node)."""
    max_failures: int = 3
    """How many times a lost sampler or scorer is restarted, and the train workers are started again from
    the last checkpoint, before the run fails (a node that never comes back fails the run, never hangs it)."""

    def common_sampling(self) -> dict:
        """The sampling settings every algorithm shares."""
        return dict(
            num_steps=self.num_steps,
            guidance_scale=self.guidance_scale,
            eta=self.eta,
            resolution=self.resolution,
        )

    def __post_init__(self) -> None:
        check_model_name(self.model)
        _check(self.epochs >= 1, "epochs", self.epochs, "at least 1")
        load_prompts(self.prompts)  # a ValueError naming the set or file and what was expected
        _check(self.num_steps >= 1, "num_steps", self.num_steps, "at least 1")
        _check(self.guidance_scale >= 1, "guidance_scale", self.guidance_scale, "at least 1")
        _check(
            self.resolution is None or (self.resolution >= 8 and self.resolution % 8 == 0),
            "resolution",
            self.resolution,
            "a multiple of 8, at least 8",
        )
        _check(self.lora_rank >= 1, "lora_rank", self.lora_rank, "at least 1")
        _check(len(self.lora_targets) > 0, "lora_targets", self.lora_targets, "at least one module name")
        _check(self.lora_alpha is None or self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "positive")
        _check(self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm, "positive")
        _check(self.threads is None or self.threads >= 1, "threads", self.threads, "at least 1")
        _check(self.image_every >= 1, "image_every", self.image_every, "at least 1")
        load_prompts(self.eval_prompts)
        _check(
            self.eval_images >= 2, "eval_images", self.eval_images, "at least 2 (a standard error needs two)"
        )
        _check(self.eval_every >= 0, "eval_every", self.eval_every, "0 (never) or more")
        _check(self.sample_batch >= 1, "sample_batch", self.sample_batch, "at least 1")
        for field in ("samplers", "scorers", "train_workers"):
            _check(getattr(self, field) >= 1, field, getattr(self, field), "at least 1")
        for field in ("sampler_gpus", "scorer_gpus", "worker_gpus"):
            value = getattr(self, field)
            whole_or_fraction = 0 <= value <= 1 or value == int(value)
            _check(whole_or_fraction, field, value, "0, a fraction of one GPU, or a whole number")
        _check(self.actor_cpus > 0, "actor_cpus", self.actor_cpus, "positive")
        _check(self.max_failures >= 0, "max_failures", self.max_failures, "0 or more")
        _check(self.ready_timeout_s > 0, "ready_timeout_s", self.ready_timeout_s, "positive")
        for field in ("sampler_resource", "worker_resource"):
            value = getattr(self, field)
            ok = value is None or (value.strip() == value != "" and value not in ("CPU", "GPU", "memory"))
            _check(ok, field, value, "a custom resource name (CPUs and GPUs have fields of their own)")
        _check(
            self.ray or (self.samplers, self.scorers, self.train_workers) == (1, 1, 1),
            "ray",
            self.ray,
            "True when samplers, scorers or train_workers is above 1",
        )
        _check(
            self.run_name is None
            or (self.run_name.strip() and "/" not in self.run_name and "'" not in self.run_name),
            "run_name",
            self.run_name,
            "a non-empty name without '/' or quotes",
        )
        problem = None if self.storage is None else storage_problem(self.storage)
        _check(not problem, "storage", self.storage, f"{problem}; expected {ALLOWED}")

    def actor_counts(self) -> dict[str, int]:
        """How many of each kind of actor a Ray run starts (the fields that count them)."""
        return {"samplers": self.samplers, "scorers": self.scorers, "train_workers": self.train_workers}


@dataclass(frozen=True)
class D3POConfig(CommonConfig):
    reward: str = "jpeg-compressibility"
    """Reward whose order within each group decides the preferred sample: jpeg-compressibility,
    jpeg-incompressibility, smoothness, brightness, aesthetic, imagereward (hub weights), aesthetic:<folder>
    or imagereward:<folder> (local weights); several joined by commas (a,b): a sample is preferred only when
    it is at least as good on every reward and better on one. human:<folder>: train on the labelled pairs
    of a batch from jobs/sample_groups.py, labelled on jobs/label.py's page (no samplers or scorers start)."""
    epochs: int = 12
    """Sampling-and-training rounds (12 raise the tiny default's evaluation reward beyond noise, forward and
    not reversed, on seeds 0-2; see the README)."""
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
    pair of 2 on two of them (see the README)."""
    eta: float = 1.0
    """DDIM stochasticity; must be > 0, since the loss needs each step's log-probability."""
    beta: float = 0.1
    """DPO temperature on the log-ratio difference."""
    clip: float = 0.1
    """Ratios policy/reference are clamped to [1 - clip, 1 + clip]."""
    lr: float = 6e-3
    """AdamW learning rate (the paper uses 3e-5 on SD 1.5; the tiny model needs far more, and at 1e-2 a
    drift that does not depend on the reward outgrows the preference signal)."""
    batch_size: int = 16
    """(pair, timestep) items per optimizer step."""

    algorithm: ClassVar[str] = "d3po"

    def describe(self) -> tuple[str, str]:
        """(the algorithm's name, an epoch's work) for the job's first line."""
        return "D3PO", f"{self.pairs_per_epoch} groups of {self.group_size}"

    @property
    def prompts_per_epoch(self) -> int:
        """One prompt per group."""
        return self.pairs_per_epoch

    def sampling_settings(self) -> dict:
        """`sample_trajectories` arguments (see rlft/epoch.py's `sample_chunk`): every latent and log-prob."""
        return self.common_sampling() | dict(group_size=self.group_size, with_logprob=True, last_only=False)

    @property
    def human(self) -> bool:
        """Training on people's labels (reward human:<folder>): nothing is sampled or scored."""
        return self.reward.startswith(HUMAN)

    def actor_counts(self) -> dict[str, int]:
        return super().actor_counts() | ({"samplers": 0, "scorers": 0} if self.human else {})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.human:
            folder = self.reward.removeprefix(HUMAN)
            _check(
                folder.strip() != "", "reward", self.reward, "human:<folder> names a labelled batch folder"
            )
        else:
            get_reward(self.reward)
        _check(self.pairs_per_epoch >= 1, "pairs_per_epoch", self.pairs_per_epoch, "at least 1")
        _check(self.pairs in ("all", "best-worst"), "pairs", self.pairs, "all or best-worst")
        _check(
            self.pairs == "all" or "," not in self.reward,
            "pairs",
            self.pairs,
            "best-worst needs one reward (several rewards have no single best sample)",
        )
        _check(self.group_size >= 2, "group_size", self.group_size, "at least 2 (D3PO compares samples)")
        _check(self.eta > 0, "eta", self.eta, "> 0 (D3PO needs log-probabilities, undefined at eta = 0)")
        _check(self.beta > 0, "beta", self.beta, "positive")
        _check(0 < self.clip < 1, "clip", self.clip, "in (0, 1)")
        _check(self.lr > 0, "lr", self.lr, "positive")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")
        _check_divides(self.batch_size, self.train_workers)


@dataclass(frozen=True)
class DRaFTConfig(CommonConfig):
    reward: str = "smoothness"
    """Differentiable reward backpropagated through the last steps of sampling: smoothness, brightness,
    aesthetic, imagereward (hub weights), aesthetic:<folder> or imagereward:<folder> (local weights)."""
    variant: Literal["draft-k", "draft-lv", "full"] = "draft-k"
    """'draft-k': gradient through the last k steps; 'draft-lv': k = 1 with lv_copies re-noised copies;
    'full': gradient through every step."""
    k: int = 1
    """Steps with gradient for draft-k (1..num_steps)."""
    lv_copies: int = 2
    """Re-noised copies of the final sample for draft-lv (the paper's n; 2 by default)."""
    batch_size: int = 8
    """Samples per optimizer step."""
    steps_per_epoch: int = 4
    """Optimizer steps per epoch, each on a fresh batch."""
    eta: float = 0.0
    """DDIM stochasticity (0: deterministic sampling, as DRaFT uses)."""
    lr: float = 1e-2
    """AdamW learning rate (the paper uses 2e-4 on SD 1.5 with rank-8 LoRA)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            not self.reward.startswith(HUMAN),
            "reward",
            self.reward,
            "DRaFT needs a differentiable reward; train on human labels with jobs/d3po.py",
        )
        get_reward(self.reward, differentiable=True)
        _check(1 <= self.k <= self.num_steps, "k", self.k, f"in 1..{self.num_steps} (num_steps)")
        _check(self.lv_copies >= 1, "lv_copies", self.lv_copies, "at least 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")
        _check_divides(self.batch_size, self.train_workers)
        _check(self.steps_per_epoch >= 1, "steps_per_epoch", self.steps_per_epoch, "at least 1")
        _check(self.eta >= 0, "eta", self.eta, ">= 0")
        _check(self.lr > 0, "lr", self.lr, "positive")

    algorithm: ClassVar[str] = "draft"

    def describe(self) -> tuple[str, str]:
        """(the algorithm's name, an epoch's work) for the job's first line."""
        name = f"DRaFT ({self.variant}, K={self.steps_with_grad})"
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
    def steps_with_grad(self) -> int:
        """K: how many final steps the gradient runs through."""
        return {"draft-k": self.k, "draft-lv": 1, "full": self.num_steps}[self.variant]
