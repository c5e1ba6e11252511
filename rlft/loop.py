"""The training loop's frame, shared by every algorithm and backend (rlft/local.py,
rlft/distributed/ray_loop.py).

`run_backend` runs a backend's training (the config's algorithm's epoch, or one over fixed items) through
`run_epochs`, which runs any epoch function: resume from the checkpoint, evaluate the base model on the fixed
evaluation set, one printed line per epoch (and the backend's progress while it runs, rlft/progress.py),
checkpoint, MLflow, the final adapter (registered in MLflow's Model Registry with `register_model`) and
the before/after grid.
Started again on the same `run_dir`, a run goes on after the last finished epoch with the same numbers an
uninterrupted run gives, and logs no epoch to MLflow twice.
"""

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from rlft.algorithms.backend import EpochFn, EpochParts, EvalFn, Log, Trained, Trainer
from rlft.algorithms.registry import algorithm_of
from rlft.configs import RunConfig
from rlft.epoch import reward_metrics
from rlft.evaluation import (
    before_after_grid,
    eval_metrics,
    eval_prompts,
    format_eval,
    judged_metrics,
    save_grid,
)
from rlft.progress import Progress, quiet
from rlft.rewards.registry import reward_names
from rlft.runs.checkpoint import (
    check_same_run,
    load_checkpoint,
    replace_folder,
    save_checkpoint,
    staging_folder,
    write_files,
)
from rlft.runs.storage import RunStorage
from rlft.runs.tracking import Tracker

GRID_FILE = "before_after.png"


def format_epoch(epoch: int, m: dict[str, float], learner_parts: EpochParts) -> str:
    """One line per epoch, each number at the digits where it moves, the algorithm's own numbers given by
    `learner_parts` (its Algorithm's `epoch_parts`); an epoch that sampled nothing (people's labels) has no
    reward or images."""
    parts = [f"epoch {epoch:3d}"]
    if "eval_reward_mean" in m:
        parts.append(format_eval(m))
    if "reward_mean" in m:
        parts.append(f"train reward {m['reward_mean']:.4f} +- {m['reward_std']:.4f}")
    parts += learner_parts(m)
    parts.append(f"grad {m['grad_norm']:.1e}")
    if m.get("sample_staleness"):  # pipelined: sampled while the epoch before trained
        parts.append(f"sampled {m['sample_staleness']:.0f} epoch behind")
    if "samples_per_s" in m:
        parts.append(f"{m['samples_per_s']:.1f} img/s")
    elif "items_per_s" in m:
        parts.append(f"{m['items_per_s']:.1f} items/s")
    parts.append(f"{m['epoch_time_s']:.1f} s")
    if m.get("nan_rewards"):
        parts.append(f"{m['nan_rewards']:.0f} NaN rewards dropped")
    return " | ".join(parts)


def run_epochs(
    cfg: RunConfig,
    run_dir: Path,
    trained: Trained,
    one_epoch: EpochFn,
    tracker: Tracker | None,
    log: Log,
    evaluate: EvalFn | None = None,
    progress: Progress | None = None,
) -> list[dict[str, float]]:
    """Resume from run_dir's checkpoint if there is one, then run, checkpoint and log the remaining epochs.

    With `evaluate` (and cfg.eval_every > 0), the base model is scored on the fixed evaluation set first
    (again on resume: it is deterministic), then the policy after every cfg.eval_every-th epoch and the last,
    paired against the base; the first and last evaluations' images end in run_dir/before_after.png.
    `progress`: what the backend counts its work in, shown while an epoch runs (default: not shown).
    """
    progress = progress or quiet()
    learner_parts = algorithm_of(cfg).epoch_parts  # the algorithm's own numbers on each epoch's line
    checkpoint = Path(run_dir) / "checkpoint"
    storage = RunStorage(cfg.storage, Path(run_dir).name) if cfg.storage else None  # <storage>/<run>/
    settings = cfg.defining_settings()  # recorded in every checkpoint
    last, history, state = load_checkpoint(checkpoint, storage, log)
    check_same_run(checkpoint, settings, Path(run_dir).name)  # before anything is trained
    progress.begin("evaluating the base model")
    base = evaluate() if evaluate is not None and cfg.eval_every else None  # before the state is loaded
    progress.close()
    if base is not None:
        log(
            f"evaluation set: {len(base[0])} images of {cfg.eval_prompts!r} | base model "
            f"{format_base(base[0])}"
        )
        # What the world judge reads in the base model's images, once: logged beside every evaluation's.
        base_judged = {f"{k}_base": v for k, v in judged_metrics(base[1], eval_prompts(cfg)).items()}
    if state is not None:
        own_state = state.pop("algorithm", None)  # what the epoch itself carries (DDPO's statistics)
        trained.load(state)
        if own_state is not None:
            one_epoch.load_state_dict(own_state)
        log(f"resuming {run_dir} after epoch {last}")
    if tracker is not None:  # epochs checkpointed but not logged (a crash between the two) are logged now
        logged = set(tracker.logged_epochs())
        for epoch, metrics in enumerate(history):
            if epoch not in logged:
                tracker.log_epoch(epoch, metrics)
    latest = None  # the last evaluation's (rewards, images)
    for epoch in range(last + 1, cfg.epochs):
        progress.begin(f"epoch {epoch}")
        start = time.perf_counter()
        own, rewards, show = one_epoch(epoch)
        elapsed = time.perf_counter() - start
        check_finite(epoch, own, epoch - 1)
        if rewards is None:
            metrics = own | {"epoch_time_s": elapsed}
        else:
            metrics = own | reward_metrics(rewards, elapsed, reward_names(cfg.reward))
        if base is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1):
            latest = evaluate()
            metrics |= eval_metrics(latest[0], base[0], reward_names(cfg.reward))
            metrics |= judged_metrics(latest[1], eval_prompts(cfg)) | base_judged
            metrics["eval_time_s"] = time.perf_counter() - start - elapsed
        progress.close()
        history.append(metrics)
        log(format_epoch(epoch, metrics, learner_parts))
        # Checkpoint, then log: after a crash in between, the epoch is logged from the checkpoint.
        adapter = trained.adapter_files()
        save_checkpoint(
            checkpoint,
            epoch=epoch,
            history=history,
            state=trained.state() | epoch_state(one_epoch),
            adapter=adapter,
            storage=storage,
            settings=settings,
        )
        if tracker is not None:
            tracker.log_epoch(epoch, metrics)
            tracker.log_folder(checkpoint / "adapter", f"checkpoints/epoch_{epoch:04d}")
            if show is not None and (epoch % cfg.image_every == 0 or epoch == cfg.epochs - 1):
                tracker.log_images(epoch, *show())
    write_adapter(Path(run_dir) / "adapter", trained.adapter_files())
    if storage is not None:
        storage.upload_folder(Path(run_dir) / "adapter", "adapter")
    if tracker is not None:
        tracker.log_folder(Path(run_dir) / "adapter", "adapter")
    if cfg.register_model:
        register(cfg, tracker, log)
    if base is not None:
        latest = latest or evaluate()  # a finished run started again trains nothing: evaluate it now
        grid = save_grid(before_after_grid(base[1], latest[1]), Path(run_dir) / GRID_FILE)
        log(f"before/after grid (base model and trained policy, same prompts and noise): {grid}")
        if tracker is not None:
            tracker.log_file(grid, "")
    return history


def run_backend(
    cfg: RunConfig,
    run_dir: Path,
    backend: Trainer,
    tracker: Tracker | None = None,
    log: Log = print,
    epoch_of: Callable[[Trainer], EpochFn] | None = None,
) -> list[dict[str, float]]:
    """Train on `backend` (in this process or on Ray, as the caller built it) through `run_epochs`, with its
    evaluation if it has one and its progress display. `epoch_of(backend)`: the epoch to run (default: the
    config's algorithm's, which samples; a run on people's labels gives one over its fixed items)."""
    one_epoch = (epoch_of or (lambda b: algorithm_of(cfg).epoch(cfg, b)))(backend)
    evaluate = getattr(backend, "evaluate", None)  # a backend that samples
    return run_epochs(cfg, run_dir, backend.trained, one_epoch, tracker, log, evaluate, backend.progress)


def register(cfg: RunConfig, tracker: Tracker | None, log: Log) -> None:
    """The final adapter (logged to the run as `adapter`) in the MLflow Model Registry as
    cfg.register_model, its version tagged with the base model, what it learnt from and the algorithm."""
    if tracker is None:
        log(f"register_model={cfg.register_model!r}: not registered, no MLflow run (tracking is off)")
        return
    tags = {"base_model": cfg.model, "algorithm": cfg.algorithm, "epochs": str(cfg.epochs)}
    version = tracker.register_adapter(cfg.register_model, tags | dict([cfg.trained_on()]))
    log(
        f"registered the adapter in the MLflow Model Registry: {cfg.register_model} version {version} "
        f"(models:/{cfg.register_model}/{version})"
    )


def epoch_state(one_epoch: EpochFn) -> dict:
    """{"algorithm": the state an epoch function carries from epoch to epoch}, for one that has a
    `state_dict` (DDPO's per-prompt statistics); {} for the rest, whose epochs depend only on the weights."""
    state_dict = getattr(one_epoch, "state_dict", None)
    return {} if state_dict is None else {"algorithm": state_dict()}


class TrainingDiverged(RuntimeError):
    """An epoch's loss or gradient was not finite: the run stopped before saving anything of that epoch."""


def check_finite(epoch: int, metrics: dict[str, float], last_saved: int) -> None:
    """Stop the run when the epoch's loss or gradient norm is nan or inf: the weights it leaves are not saved,
    so the last checkpoint and adapter stay as they were."""
    bad = {k: metrics[k] for k in ("loss", "grad_norm") if k in metrics and not math.isfinite(metrics[k])}
    if bad:
        found = ", ".join(f"{k} = {v}" for k, v in bad.items())
        kept = (
            f"the checkpoint of epoch {last_saved} is kept"
            if last_saved >= 0
            else "no checkpoint was written"
        )
        raise TrainingDiverged(
            f"epoch {epoch}: {found}; the run stopped before saving this epoch ({kept}). "
            "A smaller --lr or --max-grad-norm usually helps; the same --run-name resumes from what was kept"
        )


def format_base(rewards: Tensor) -> str:
    """'reward 0.412 +- 0.011' of the evaluation set's first reward."""
    first = rewards if rewards.ndim == 1 else rewards[:, 0]
    first = first[torch.isfinite(first)].double()
    return f"reward {first.mean().item():.4f} +- {first.std().item() / len(first) ** 0.5:.4f}"


def write_adapter(folder: Path, files: dict[str, bytes]) -> None:
    """The run's final adapter, written beside `folder` and renamed into place: a crash leaves the old one."""
    staging = staging_folder(folder)
    write_files(staging, files)
    replace_folder(folder, staging)
