"""What the jobs do (`jobs/d3po.py`, `jobs/draft.py`, `jobs/ddpo.py`, `jobs/d3po_labels.py`): read the flags,
check everything, open the run, train, report.

Every check that can fail (the config, the tracking store, the storage, a labelled batch, the Ray cluster's
resources) runs before an actor starts or an MLflow run is created, and a failure exits with one line naming
the bad field. The training code (diffusers, peft, Ray Train: ten seconds of imports on a small machine) is
imported only once the checks have passed, so a refusal comes at once.
"""

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import ray

from rlft.configs import RunConfig, SamplingConfig
from rlft.configs.flags import parse_config
from rlft.configs.hub import check_hub_model, check_hub_rewards
from rlft.distributed.cluster import check_resources, start_ray
from rlft.feedback.labels_config import D3POLabelsConfig
from rlft.runs.checkpoint import OtherRun, UnreadableCheckpoint, check_same_run, check_writable, run_lock
from rlft.runs.places import durable_runs_dir, in_ray_working_copy
from rlft.runs.secrets import redact
from rlft.runs.storage import check_reachable
from rlft.runs.tracking import Tracker, check_tracking_uri, tracking_uri
from rlft.zoo.names import GPU_ONLY_MODELS

History = list[dict[str, float]]


def check_gpu(cfg: RunConfig) -> None:
    """A ValueError naming `device`, `model` or a GPU field when the run asks for GPUs that cannot exist: none
    on this machine, and no Ray cluster to join (--ray-address, RAY_ADDRESS or a `ray start` cluster here)."""
    import torch
    from ray._private.utils import read_ray_address

    if torch.cuda.is_available() or (cfg.ray and (cfg.ray_address or os.environ.get("RAY_ADDRESS"))):
        return
    if cfg.ray and (ray.is_initialized() or read_ray_address()):
        return  # a Ray this process joined, or a `ray start` cluster here: start_ray checks its nodes
    if cfg.model in GPU_ONLY_MODELS:
        raise ValueError(
            f"model={cfg.model!r} is not allowed: it is for GPU work and this machine has no CUDA GPU and no "
            "Ray cluster is named (--ray-address or RAY_ADDRESS)"
        )
    if cfg.device == "cuda":
        raise ValueError(
            "device='cuda' is not allowed: this machine has no CUDA GPU and no Ray cluster is named "
            "(--ray-address or RAY_ADDRESS); use --device cpu, or submit the run to a GPU cluster"
        )
    if cfg.ray:  # a local Ray would have this machine's CPUs and no GPU
        check_resources(cfg, None, [{"CPU": float("inf"), "GPU": 0.0}])


def headline(cfg: RunConfig) -> str:
    name, work = cfg.describe()
    signal = " ".join(cfg.trained_on())
    where = f"Ray: {cfg.describe_actors()}" if cfg.ray else "one process"
    if cfg.pipelined():
        where += ", pipelined (each epoch samples while the one before trains)"
    return f"{name} | model {cfg.model} | {signal} | {cfg.epochs} epochs x {work} | {where}"


def summary(history: History, run_dir: Path) -> str:
    """The last line: the fixed evaluation set's reward before and after training (what shows learning),
    the paired gain in standard errors, and where the before/after grid and the adapter are."""
    from rlft.loop import GRID_FILE

    rewards = [h["reward_mean"] for h in history]
    evaluated = [h for h in history if "eval_gain_mean" in h]
    if not evaluated:
        return f"train reward: first {rewards[0]:.4f}, last {rewards[-1]:.4f} | adapter in {run_dir}/adapter"
    m = evaluated[-1]
    gain, se = m["eval_gain_mean"], m["eval_gain_se"]
    return (
        f"eval reward: base {m['eval_reward_base_mean']:.4f} -> {m['eval_reward_mean']:.4f} "
        f"(gain {gain:+.4f} +- {se:.4f}, {gain / se if se else float('nan'):+.1f} standard errors) | "
        f"before/after grid: {run_dir / GRID_FILE} | adapter in {run_dir}/adapter"
    )


def labels_summary(history: History, run_dir: Path) -> str:
    """The last line of a run on people's labels: no rewards, the labels are the signal."""
    first, last = history[0], history[-1]
    return (
        f"labels: {last['pairs']:.0f} pairs ({last['ties']:.0f} ties) | loss: first {first['loss']:.4f}, "
        f"last {last['loss']:.4f} | accuracy: first {first['preference_accuracy']:.2f}, last "
        f"{last['preference_accuracy']:.2f} | adapter in {run_dir}/adapter"
    )


def mlflow_ui_command(uri: str) -> str:
    """How to see a store's runs: `mlflow ui` on a database, the server's own address otherwise."""
    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {redact(uri)} (experiment {os.environ.get('MLFLOW_EXPERIMENT_NAME', 'rlft')})"
    return f"mlflow ui --backend-store-uri {redact(uri)}  # then open http://127.0.0.1:5000"


def open_tracker(cfg: RunConfig, algorithm: str, run_dir: Path) -> Tracker | None:
    """The run's MLflow run (named as its folder), which logs every field of cfg (a run on labels: with the
    batch's settings resolved, as trained)."""
    if not cfg.track:
        return None
    tags = {"algorithm": algorithm, "model": cfg.model} | dict([cfg.trained_on()])
    tags["pipelined"] = str(cfg.pipelined())  # what --pipeline auto resolved to, beside the param's 'auto'
    return Tracker(run_dir.name, cfg, tags)


def run_job(
    config_type: type[SamplingConfig],
    algorithm: str,
    description: str,
    args: Sequence[str] | None = None,
    prog: str | None = None,
) -> None:
    """`rlft d3po|draft|ddpo` (jobs/d3po.py, ...): sample, score and train on Ray (or in one process); args:
    the flags (default: the command line's)."""

    def train(cfg: SamplingConfig, checked: None, **kwargs) -> History:
        from rlft.training import train

        return train(cfg, **kwargs)

    run(config_type, algorithm, description, lambda cfg: None, train, summary, args, prog)


def run_labels_job(description: str, args: Sequence[str] | None = None, prog: str | None = None) -> None:
    """`rlft train-labels` (jobs/d3po_labels.py): D3PO on a labelled batch, read and checked before Ray."""

    from rlft.feedback.human import check_labelled

    def train(cfg: D3POLabelsConfig, checked: tuple, **kwargs) -> History:
        from rlft.training import train_labels

        return train_labels(cfg, checked=checked, **kwargs)

    run(D3POLabelsConfig, "d3po-labels", description, check_labelled, train, labels_summary, args, prog)


def checked_config(
    config_type: type[RunConfig],
    job: str,
    args: Sequence[str] | None,
    description: str,
    prog: str | None,
    check: Callable[[RunConfig], object],
) -> tuple[RunConfig, object]:
    """The config the flags ask for and what `check(cfg)` gave, after every check that needs no Ray: the
    tracking store, the storage, the job's own, the model and reward weights on the hub or in its cache."""
    cfg = parse_config(config_type, job, sys.argv[1:] if args is None else args, description, prog)
    if cfg.track:
        check_tracking_uri(tracking_uri())
    if cfg.storage:
        check_reachable(cfg.storage)
    checked = check(cfg)
    check_hub_model(cfg.model)
    if isinstance(cfg, SamplingConfig):
        check_hub_rewards(cfg.reward)
    return cfg, checked


def print_plan(cfg: RunConfig) -> None:
    """--dry-run: the plan. A plan for a cluster may be made on a laptop: GPUs are noted, not required."""
    import torch

    from rlft.plan import count_model, format_plan

    print(format_plan(cfg, count_model(cfg), torch.cuda.is_available()))


def run(
    config_type: type[RunConfig],
    algorithm: str,
    description: str,
    check: Callable[[RunConfig], object],
    train: Callable[..., History],
    report: Callable[[History, Path], str],
    args: Sequence[str] | None = None,
    prog: str | None = None,
) -> None:
    """Parse and check, open the run, train (`train(cfg, checked, run_dir=, tracker=)`, where `checked` is
    what `check(cfg)` gave), print `report`. A ValueError before training exits with its one line."""
    started_ray = False
    for name in ("mlflow", "alembic"):  # their start-up INFO lines are noise in a run's output
        logging.getLogger(name).setLevel(logging.WARNING)
    held = contextlib.ExitStack()  # the run's lock, from before its MLflow run is opened to the end
    try:
        job = {"d3po-labels": "train-labels"}.get(algorithm, algorithm)
        cfg, checked = checked_config(config_type, job, args, description, prog, check)
        if cfg.dry_run:
            print_plan(cfg)
            return
        check_gpu(cfg)
        run_name = cfg.run_name or f"{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = durable_runs_dir(cfg.runs_dir) / run_name  # absolute, never inside Ray's copy of the code
        check_writable(run_dir.parent)
        check_same_run(run_dir / "checkpoint", cfg.defining_settings(), run_name)  # a resume: the same run
        print(headline(cfg), flush=True)
        if in_ray_working_copy():  # say where the work goes: not where `ray job submit` ran the code
            print(
                f"submitted with a working_dir: the run goes to {run_dir}, MLflow to {redact(tracking_uri())}"
            )
        started_ray = cfg.ray and start_ray(cfg)
        held.enter_context(run_lock(run_dir))
        tracker = open_tracker(cfg, algorithm, run_dir)
    except ValueError as error:
        held.close()
        if started_ray:
            ray.shutdown()
        sys.exit(f"error: {redact(str(error))}")
    from rlft.loop import TrainingDiverged

    try:
        with held, tracker or nullcontext():  # an error ends the MLflow run FAILED, with the error as a tag
            history = train(cfg, checked, run_dir=run_dir, tracker=tracker)
    except (TrainingDiverged, OtherRun, UnreadableCheckpoint) as error:  # OtherRun: one from storage
        sys.exit(f"error: {redact(str(error))}")
    finally:
        if started_ray:
            ray.shutdown()
    print(report(history, run_dir))
    if tracker:
        print(f"MLflow run {tracker.run_id} ({tracker.run_name}) in {redact(tracker.uri)}")
        print(f"compare runs: {mlflow_ui_command(tracker.uri)}")
