"""Where a run trains, chosen once (cfg.ray): in this process (rlft/local.py) or on Ray
(rlft/distributed/ray_loop.py), for a sampled run and a run on people's labels alike.

Both kinds go through rlft/loop.py's `run_backend` on the backend `open_backend` builds: a sampled run runs
its algorithm's epoch (rlft/algorithms/registry.py), a run on labels the epoch over its fixed pairs
(rlft/feedback/human.py's `labels_epoch`). The jobs (rlft/job.py) call `train` and `train_labels`; the
model and Ray code is imported only here, when training starts.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rlft.algorithms.backend import Log, Trainer
from rlft.configs import RunConfig, SamplingConfig
from rlft.feedback.labels_config import D3POLabelsConfig
from rlft.runs.tracking import Tracker

History = list[dict[str, float]]


@contextmanager
def open_backend(cfg: RunConfig, run_dir: Path, log: Log = print) -> Iterator[Trainer]:
    """The config's trainer (with its samplers and scorers for a `SamplingConfig`), stopped when the block
    ends: on Ray (which must be running) when cfg.ray, else in this process."""
    from rlft.progress import progress_for

    progress = progress_for(log)
    if cfg.ray:
        from rlft.distributed.launch import launch  # imports no model code: the actors start at once

        launched = launch(cfg, run_dir, log)
        from rlft.distributed.ray_loop import ray_backend  # the training code, while the actors load

        with ray_backend(cfg, run_dir, log, progress, launched) as backend:
            yield backend
    else:
        from rlft.local import local_backend

        yield local_backend(cfg, progress)


def train(cfg: SamplingConfig, run_dir: Path, tracker: Tracker | None = None, log: Log = print) -> History:
    """Sample, score and train the config's algorithm; one metrics dict per epoch (rlft/loop.py)."""
    from rlft.loop import run_backend

    with open_backend(cfg, Path(run_dir), log) as backend:
        return run_backend(cfg, Path(run_dir), backend, tracker, log)


def train_labels(
    cfg: D3POLabelsConfig,
    run_dir: str | Path,
    tracker: Tracker | None = None,
    log: Log = print,
    checked: tuple[dict, dict] | None = None,
) -> History:
    """D3PO on the majority pairs of cfg.batch for cfg.epochs passes, each an epoch of `run_epochs`:
    checkpointed, resumed after the last finished one when started again on the same run_dir, logged to
    `tracker`. Writes run_dir/adapter and returns one metrics dict per pass (`labels_epoch`'s). `checked`:
    what `check_labelled(cfg)` gave, when the caller has it already (the job checks the batch before Ray
    starts), so the batch is read once."""
    from rlft.feedback.human import check_labelled, labels_epoch
    from rlft.loop import run_backend

    checked = checked or check_labelled(cfg)

    def epoch_of(trainer: Trainer):
        return labels_epoch(cfg, trainer, checked, log)

    with open_backend(cfg, Path(run_dir), log) as backend:
        return run_backend(cfg, Path(run_dir), backend, tracker, log, epoch_of)


def train_on_labels(cfg: D3POLabelsConfig, log: Log = print) -> Path:
    """One human-feedback round: `train_labels` in runs_dir/run_name (default: human-<batch folder's name>),
    on Ray when cfg.ray (joined or started here as the jobs do), with no tracking; returns the adapter folder
    (runs_dir/run_name/adapter), which `jobs/sample_groups.py --adapter` samples from."""
    import ray

    from rlft.distributed.cluster import start_ray

    run_dir = Path(cfg.runs_dir) / (cfg.run_name or f"human-{Path(cfg.batch).resolve().name}")
    started = cfg.ray and start_ray(cfg, log)
    try:
        train_labels(cfg, run_dir, log=log)
    finally:
        if started:
            ray.shutdown()
    return run_dir / "adapter"
