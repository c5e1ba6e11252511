"""Starting a Ray run's samplers, scorers and train workers, before the driver imports the training code.

Each actor loads the model (seconds of imports and set-up); the driver's own import of the training code
(diffusers, peft) takes seconds too. This module imports neither, so a job starts the actors first and the
two overlap; `rlft.distributed.ray_loop.ray_backend` then waits for them.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from rlft.algorithms.backend import Log
from rlft.configs import RunConfig, SamplingConfig
from rlft.distributed.actors import start_actors
from rlft.distributed.train_workers import TrainWorkers


@dataclass
class Launched:
    """A run's actors, started and perhaps still loading; `stop` ends them all."""

    samplers: list
    scorers: list
    workers: TrainWorkers
    started_at: float = field(default_factory=time.perf_counter)

    def stop(self) -> None:
        self.workers.stop()
        for actor in self.samplers + self.scorers:
            ray.kill(actor)


def launch(cfg: RunConfig, run_dir: Path, log: Log = print) -> Launched:
    """Start the config's actors and train workers without waiting for them to be ready: samplers and
    scorers for a config that samples (a `SamplingConfig`), the train workers alone for one that trains on
    fixed items (people's labels)."""
    samplers, scorers = [], []
    if isinstance(cfg, SamplingConfig):
        log("starting the samplers, scorers and train workers (each loads the model once)")
        samplers, scorers = start_actors(cfg, cfg.sampling_settings(), cfg.reward)
    else:
        log("starting the train workers (each loads the model once)")
    try:
        workers = TrainWorkers(cfg, Path(run_dir) / "ray", Path(run_dir).name, wait=False)
    except BaseException:
        for actor in samplers + scorers:
            ray.kill(actor)
        raise
    return Launched(samplers, scorers, workers)
