"""The fields every job shares: `RunConfig`, what any training run has (the model, the LoRA, where the run
is kept and tracked, the Ray train workers). A run that also samples and scores: rlft/configs/sampling.py.

A bad value raises ValueError naming the field and what is allowed, before any model is built.
"""

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import ClassVar, Literal

from rlft.configs.checks import check, check_gpus, check_resource, run_name_stays_below
from rlft.runs.places import default_runs_dir
from rlft.runs.storage import ALLOWED, storage_problem
from rlft.zoo.names import DEFAULT_LORA_TARGETS, GPU_ONLY_MODELS, check_model_name

# Fields that say where and how fast a run goes, not what it is: they may change when the run resumes.
RUNTIME_FIELDS = frozenset(
    {"epochs", "threads", "device", "run_name", "runs_dir", "storage", "track", "ray", "ray_address"}
    | {"samplers", "sampler_gpus", "scorers", "scorer_gpus", "train_workers", "worker_gpus", "actor_cpus"}
    | {"sampler_resource", "worker_resource", "ready_timeout_s", "max_failures", "sample_batch"}
    | {"eval_every", "image_every", "compile", "micro_batch", "register_model", "config", "dry_run"}
)


@dataclass(frozen=True)
class RunConfig:
    model: str = "tiny"
    """'tiny' (the pretrained tiny model shipped in the package, offline, 32x32), 'tiny-random' (the same
    shapes, random weights), 'tiny-sdxl', 'tiny-sd3' and 'tiny-flux' (those families' structures, tiny,
    random weights), 'sd15-random', 'sd35-random' and 'flux-random' (SD 1.5, SD 3.5 Large and FLUX.1-dev
    shapes, random weights, for GPU memory and speed work), or a hub id or folder of a Stable Diffusion
    1.x/2.x, SDXL, Stable Diffusion 3.x or FLUX.1 pipeline."""
    epochs: int = 8
    """Training rounds."""
    seed: int = 0
    """Seeds the tiny model's weights, the LoRA init, the noise and the shuffles."""
    lora_rank: int = 4
    """LoRA rank on the attention projections of the UNet (or of SD3's and FLUX's transformer)."""
    lora_alpha: float | None = None
    """LoRA alpha (scale alpha/rank); default: equal to the rank."""
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    """Module names (suffixes) of the UNet or transformer that get LoRA layers: the attention projections by
    default."""
    full_finetune: bool = False
    """Train every weight of the UNet or transformer instead of a LoRA adapter (the reference is then a frozen
    copy)."""
    gradient_checkpointing: bool = False
    """Recompute the UNet's or transformer's activations in the backward pass (diffusers'
    `enable_gradient_checkpointing`): the memory of one block instead of all, for DRaFT through several steps
    or large models at high resolution, for about a third more compute. Same gradients."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """The frozen model's weights and arithmetic, in sampling and training: 'bfloat16' halves their memory and
    runs on a GPU's bfloat16 matrix units. The LoRA weights and their optimizer stay float32 (as diffusers'
    training scripts keep them: a bfloat16 weight rounds small steps away) and log-probabilities are taken in
    float32. Full fine-tuning trains every weight, so it needs float32."""
    compile: bool = False
    """`torch.compile` the UNet or transformer where it samples and trains: the first calls compile it (a few
    minutes, again after each new batch shape), the later ones run faster (D3PO's update took 0.78x and
    0.92x the time in two sittings on a 2-core CPU, `python benchmarks/speed/core.py --compile`). Numbers
    agree with uncompiled ones to rounding."""
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
    runs_dir: str = dataclasses.field(default_factory=default_runs_dir)
    """Folder holding one subfolder per run: its checkpoint and final adapter. Default: RLFT_RUNS_DIR, else
    `runs`; under `ray job submit --working-dir`, a relative folder goes under RLFT_HOME (default ~/rlft),
    not into Ray's temporary copy of the code."""
    storage: str | None = dataclasses.field(default_factory=lambda: os.environ.get("RLFT_STORAGE") or None)
    """Storage every node shares (s3://bucket/prefix, gs://bucket/prefix, or a mounted folder): each epoch's
    checkpoint and the final adapter are also copied to <storage>/<run_name>/, and a run whose own folder
    lacks the newest checkpoint (a new head node, a lost disk) resumes from there; give --run-name to
    resume. Default: the RLFT_STORAGE environment variable (cluster.yaml sets it), else none; --storage None
    turns it off."""
    track: bool = True
    """Log to MLflow (MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME; default: sqlite mlflow.db here)."""
    shuffle: bool = True
    """Train on the epoch's items in a seeded random order (a Ray Data global shuffle under Ray);
    --no-shuffle keeps the order they were made in."""
    ray: bool = True
    """Run on Ray: Ray Train workers fed through a Ray Data shuffle (and, where the job samples, sampler and
    scorer actors). --no-ray runs the same epochs in this one process (same numbers with one of each actor
    and --no-shuffle)."""
    ray_address: str | None = None
    """Ray cluster to join; default: RAY_ADDRESS, else a cluster started on this machine by `ray start`,
    else a new local Ray for this job."""
    train_workers: int = 1
    """Ray Train workers (data parallel: each takes an equal share of the items; gradients are averaged)."""
    worker_gpus: float = 0.0
    """GPUs per train worker (0: CPU workers)."""
    actor_cpus: float = 1.0
    """CPUs each actor and train worker asks Ray for."""
    worker_resource: str | None = None
    """A custom Ray resource each train worker also asks one unit of, to keep workers on the node types that
    offer it (cluster.yaml's `resources`); default: none."""
    ready_timeout_s: float = 900.0
    """Seconds to wait for the actors and train workers to start, or to start again after a node is lost,
    before the run fails (an autoscaler needs minutes to add a GPU node)."""
    max_failures: int = 3
    """How many times a lost actor is restarted, and the train workers are started again from the last
    checkpoint, before the run fails (a node that never comes back fails the run, never hangs it)."""
    register_model: str | None = None
    """Register the final adapter in the MLflow Model Registry under this name, tagged with its base model,
    reward and algorithm; default: not registered."""
    config: str | None = None
    """A recipe: the name of one shipped with rlft (`rlft recipes` lists them) or a TOML file of this job's
    fields; flags given beside it override it."""
    dry_run: bool = False
    """Check everything, print the plan (actors, memory per process, data per epoch, checkpoint size) and
    exit: no Ray, no model weights, no run folder, no MLflow run."""

    algorithm: ClassVar[str] = ""  # each job's config names the algorithm it trains

    def actor_counts(self) -> dict[str, int]:
        """How many of each kind of actor a Ray run starts (the fields that count them)."""
        return {"samplers": 0, "scorers": 0, "train_workers": self.train_workers}

    def describe_actors(self) -> str:
        """'1 sampler(s), 1 scorer(s), 1 train worker(s)': the actors a Ray run starts, kinds it has none of
        left out (the job's first line, and the line when they are ready)."""
        counts = self.actor_counts()
        return ", ".join(f"{n} {kind.replace('_', ' ')[:-1]}(s)" for kind, n in counts.items() if n)

    def pipelined(self) -> bool:
        """Whether the next epoch's sampling overlaps this epoch's training: never for a run that samples
        nothing (people's labels); see SamplingConfig.pipeline."""
        return False

    def defining_settings(self) -> dict:
        """What makes the run the run it is (every field but RUNTIME_FIELDS, and the job's kind), as JSON
        values: recorded in each checkpoint, and a resume under the same name must match them. A float32
        run records no dtype, so checkpoints from before the field still match."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_FIELDS}
        if self.dtype == "float32":
            del fields["dtype"]
        return json.loads(json.dumps({"job": type(self).__name__, "algorithm": self.algorithm} | fields))

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # every float flag: nan and inf would train NaN weights
            value = getattr(self, field.name)
            if isinstance(value, float):
                check(math.isfinite(value), field.name, value, "a finite number")
        check(self.seed >= 0, "seed", self.seed, "0 or more")
        check_model_name(self.model)
        check(
            not (self.model in GPU_ONLY_MODELS and self.device == "cpu"),
            "device",
            self.device,
            f"'cuda' or 'auto' for {self.model} (full size, for GPU work)",
        )
        check(self.epochs >= 1, "epochs", self.epochs, "at least 1")
        check(self.lora_rank >= 1, "lora_rank", self.lora_rank, "at least 1")
        check(len(self.lora_targets) > 0, "lora_targets", self.lora_targets, "at least one module name")
        check(self.lora_alpha is None or self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "positive")
        check(self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm, "positive")
        check(self.dtype in ("float32", "bfloat16"), "dtype", self.dtype, "'float32' or 'bfloat16'")
        check(
            self.dtype == "float32" or not self.full_finetune,
            "dtype",
            self.dtype,
            "'float32' with full_finetune (bfloat16 weights would round small steps away)",
        )
        check(self.threads is None or self.threads >= 1, "threads", self.threads, "at least 1")
        check(self.train_workers >= 1, "train_workers", self.train_workers, "at least 1")
        check_gpus("worker_gpus", self.worker_gpus)
        check(self.actor_cpus > 0, "actor_cpus", self.actor_cpus, "positive")
        check(self.max_failures >= 0, "max_failures", self.max_failures, "0 or more")
        check(self.ready_timeout_s > 0, "ready_timeout_s", self.ready_timeout_s, "positive")
        check_resource("worker_resource", self.worker_resource)
        kinds = [kind for kind, count in self.actor_counts().items() if count > 1]
        check(self.ray or not kinds, "ray", self.ray, f"True when {' or '.join(kinds)} is above 1")
        check(
            self.run_name is None or run_name_stays_below(self.run_name),
            "run_name",
            self.run_name,
            "a folder name one level below runs_dir: not '.' or '..', no '/', '\\' or quotes",
        )
        name = self.register_model
        check(
            name is None or (self.track and name.strip() != "" and not set(name) & set("'\"")),
            "register_model",
            name,
            "a model name without quotes (MLflow's registry searches by it), with tracking on (--no-track "
            "keeps no MLflow run to register from)",
        )
        problem = None if self.storage is None else storage_problem(self.storage)
        check(not problem, "storage", self.storage, f"{problem}; expected {ALLOWED}")
