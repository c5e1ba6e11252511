"""`SamplingConfig`: a run that samples and scores (prompts, the fixed evaluation set, sampler and scorer
actors), the base of every sampling algorithm's config (D3PO, DRaFT, DDPO), and what each of them supplies:
how many prompts and images an epoch takes, the sampling settings, and its first line.

A bad value raises ValueError naming the field and what is allowed, before any model is built.
"""

from dataclasses import dataclass
from typing import ClassVar, Literal

from rlft.configs.base import RunConfig
from rlft.configs.checks import check, check_gpus, check_resource
from rlft.prompts import load_prompts


@dataclass(frozen=True)
class SamplingConfig(RunConfig):
    prompts: str = "shapes"
    """Prompts: a built-in set (shapes, the tiny model's world; scenes, a broad set for real models; animals,
    simple-animals, unseen-animals, everyday-objects, animal-activities; see rlft/prompts.py) or a path to a
    text file, one prompt per line (blank lines and # lines skipped)."""
    eval_prompts: str = "shapes-eval"
    """Prompts of the fixed evaluation set (a built-in set or a file, as --prompts), taken in order; the
    default holds captions that --prompts shapes never draws."""
    eval_images: int = 32
    """Images in the fixed evaluation set: one per evaluation prompt (cycling), each with fixed noise. The
    tiny defaults' gains stand 7 or more standard errors clear with 32; more images narrow the error by
    their square root and cost time at every evaluation."""
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
    image_every: int = 2
    """Log an image grid with its prompts every this many epochs (and at the last)."""
    sample_batch: int = 8
    """Prompts per sampler call (D3PO: groups); an epoch's prompts are cut into chunks of this size."""
    samplers: int = 1
    """Sampler actors; each holds the pipeline and the current LoRA, and takes chunks in turn."""
    sampler_gpus: float = 0.0
    """GPUs per sampler (a fraction shares a GPU; 0: a CPU actor)."""
    scorers: int = 1
    """Scorer actors turning images into rewards; 0: each sampler scores its own images (one process
    fewer; on a GPU the reward shares the sampler's)."""
    scorer_gpus: float = 0.0
    """GPUs per scorer (a fraction shares a GPU; 0: a CPU actor)."""
    sampler_resource: str | None = None
    """A custom Ray resource each sampler also asks one unit of, to keep samplers on the node types that
    offer it (cluster.yaml's `resources`); default: none."""
    pipeline: Literal["auto", "on", "off"] = "off"
    """D3PO and DDPO: the samplers draw epoch e+1 while the train workers train epoch e, so every epoch after
    the first samples with the weights of two epochs before (one epoch stale, logged as `sample_staleness`).
    'on' also runs in one process (no overlap there; the same numbers as on Ray); 'auto': on when each
    sampler and each train worker has a whole GPU of its own (sampler_gpus and worker_gpus at least 1; on a
    shared CPU the two would only take turns). Off by default: on the tiny model the stale samples learned
    less on each of 3 seeds (docs/learning.md, "Pipelined epochs learn less")."""

    can_pipeline: ClassVar[bool] = False  # the algorithms whose epoch samples first, then trains

    # What each algorithm's config supplies (a field or a property), for the epoch, the plan and the jobs.
    @property
    def prompts_per_epoch(self) -> int:
        """Prompts an epoch draws."""
        raise NotImplementedError(f"{type(self).__name__} does not say how many prompts an epoch draws")

    @property
    def images_per_epoch(self) -> int:
        """Images an epoch samples."""
        raise NotImplementedError(f"{type(self).__name__} does not say how many images an epoch samples")

    def sampling_settings(self) -> dict:
        """`sample_trajectories` arguments for the epoch's samples (rlft/epoch.py's `sample_chunk`)."""
        raise NotImplementedError(f"{type(self).__name__} has no sampling settings")

    def describe(self) -> tuple[str, str]:
        """(the algorithm's name, an epoch's work) for the job's first line."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its epoch")

    def pipelined(self) -> bool:
        """Whether the next epoch's sampling overlaps this epoch's training (see `pipeline`)."""
        if self.pipeline == "auto":
            own_gpus = self.ray and self.sampler_gpus >= 1 and self.worker_gpus >= 1
            return self.can_pipeline and own_gpus
        return self.pipeline == "on"

    def defining_settings(self) -> dict:
        """As RunConfig's, with `pipeline` resolved: a pipelined run samples from other weights, so it is
        another run; an unpipelined one records nothing (checkpoints from before the field still match)."""
        settings = super().defining_settings()
        del settings["pipeline"]
        return settings | ({"pipelined": True} if self.pipelined() else {})

    def trained_on(self) -> tuple[str, str]:
        """(what the run learns from, which): the reward, for the job's first line and MLflow's tags."""
        return "reward", self.reward

    def common_sampling(self) -> dict:
        """The sampling settings every algorithm shares."""
        return dict(
            num_steps=self.num_steps,
            guidance_scale=self.guidance_scale,
            eta=self.eta,
            resolution=self.resolution,
        )

    def actor_counts(self) -> dict[str, int]:
        return {"samplers": self.samplers, "scorers": self.scorers, "train_workers": self.train_workers}

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.samplers >= 1, "samplers", self.samplers, "at least 1")
        check(self.scorers >= 0, "scorers", self.scorers, "0 (the samplers score) or more")
        check_gpus("sampler_gpus", self.sampler_gpus)
        check_gpus("scorer_gpus", self.scorer_gpus)
        check(
            self.scorers > 0 or self.scorer_gpus == 0,
            "scorer_gpus",
            self.scorer_gpus,
            "0 with scorers=0 (each sampler scores its own images on its own GPU share)",
        )
        check_resource("sampler_resource", self.sampler_resource)
        check(self.pipeline in ("auto", "on", "off"), "pipeline", self.pipeline, "'auto', 'on' or 'off'")
        check(
            self.can_pipeline or self.pipeline != "on",
            "pipeline",
            self.pipeline,
            f"'auto' or 'off' for {self.algorithm or 'this job'}: its learner finishes or scores its own "
            "samples with the current weights, so there is no sampling to overlap",
        )
        load_prompts(self.prompts)  # a ValueError naming the set or file and what was expected
        check(self.num_steps >= 1, "num_steps", self.num_steps, "at least 1")
        check(self.guidance_scale >= 1, "guidance_scale", self.guidance_scale, "at least 1")
        check(
            self.resolution is None or (self.resolution >= 8 and self.resolution % 8 == 0),
            "resolution",
            self.resolution,
            "a multiple of 8, at least 8",
        )
        check(self.image_every >= 1, "image_every", self.image_every, "at least 1")
        load_prompts(self.eval_prompts)
        check(
            self.eval_images >= 2, "eval_images", self.eval_images, "at least 2 (a standard error needs two)"
        )
        check(self.eval_every >= 0, "eval_every", self.eval_every, "0 (never) or more")
        check(self.sample_batch >= 1, "sample_batch", self.sample_batch, "at least 1")
