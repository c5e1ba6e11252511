"""The training side of a Ray run: the Ray Train workers (rlft/distributed/train_workers.py) and the
driver's copy of what they hold.

`RayTrainer.train` sends an epoch's items through a Ray Data shuffle, one equal share per worker
(`dataset_shards`), waits for the workers' replies, and brings rank 0's new weights back to the driver
(`RayTrained.fetch`) and to the samplers, if the run has any (`RayTrained.sync_samplers`). A run on people's
labels uses it alone; rlft/distributed/ray_loop.py's `RayBackend` adds the samplers and scorers.
"""

import itertools
import time

import ray
import torch
from torch import Tensor

from rlft.algorithms.backend import Log
from rlft.configs import RunConfig
from rlft.distributed.actors import Weights
from rlft.distributed.train_workers import TrainWorkers, WorkersRestarted
from rlft.epoch import stream_seed
from rlft.progress import Progress, quiet


def dataset_shards(items: dict[str, Tensor], cfg: RunConfig, epoch: int) -> list:
    """The items as a Ray Dataset, globally shuffled with the epoch's seed, in equal shares per worker.

    Few blocks: with Ray's default block count a 300-row shuffle took 17 s here, with one per worker 0.2 s.
    """
    rows = [{k: v[i].numpy() for k, v in items.items()} for i in range(len(items["prompt"]))]
    dataset = ray.data.from_items(rows, override_num_blocks=cfg.train_workers)
    if cfg.shuffle:
        dataset = dataset.random_shuffle(seed=stream_seed(cfg.seed, epoch, "shuffle"))
    return dataset.split(cfg.train_workers, equal=True)


class RayTrained:
    """The trained state: held by the train workers, copied to the driver after every update.

    The driver's copy (the state of the last checkpoint) is what a restarted worker group loads, and the
    samplers load the weights from an object the driver owns: neither is lost with a worker's node.
    """

    def __init__(self, workers: TrainWorkers, samplers: list):
        self.workers, self.samplers = workers, samplers
        self._state: dict = {}
        self._adapter: dict[str, bytes] = {}
        self._versions = itertools.count(1)
        self.weights = Weights(0, [None])
        # A pipelined run's next sampling weights, and the samplers' handle on them.
        self.sampling_weights: dict[str, Tensor] | None = None
        self._sampling_ref: Weights | None = None

    def fetch(self) -> None:
        """Copy the workers' newest state to the driver and give the samplers a reference to it."""
        self._state, self._adapter = self.workers.state(), self.workers.adapter_files()
        self.weights = Weights(next(self._versions), [ray.put(self._state["weights"])])

    def keep_for_sampling(self) -> Weights:
        """The current weights become the next epoch's sampling weights (a pipelined run)."""
        self.sampling_weights, self._sampling_ref = self._state["weights"], self.weights
        return self.weights

    def for_sampling(self) -> tuple[Weights, int]:
        """(the weights an epoch samples with, how many epochs' updates they lack)."""
        return (self.weights, 0) if self._sampling_ref is None else (self._sampling_ref, 1)

    def sync_samplers(self) -> float:
        start = time.perf_counter()
        ray.get([s.load_weights.remote(self.weights) for s in self.samplers])
        return time.perf_counter() - start

    def state(self) -> dict:
        if self.sampling_weights is None:
            return self._state
        return self._state | {"sampling_weights": self.sampling_weights}

    def load(self, state: dict) -> None:
        self.workers.load({"weights": state["weights"], "optimizer": state["optimizer"]})
        self.fetch()
        self.sampling_weights = state.get("sampling_weights")
        if self.sampling_weights is not None:
            self._sampling_ref = Weights(next(self._versions), [ray.put(self.sampling_weights)])
        self.sync_samplers()

    def adapter_files(self) -> dict[str, bytes]:
        return self._adapter

    def train(
        self, epoch: int, prompts: list[str], shards, log: Log, progress: Progress | None = None
    ) -> list[dict]:
        """The workers' replies for the epoch; a lost group is restarted from the last checkpoint and the
        epoch repeated (`shards()` makes the epoch's shards afresh), up to cfg.max_failures times. The
        items trained are counted in `progress` (without it, a line every 30 s says how many workers are
        done)."""
        while True:
            try:
                replies = self.workers.train(epoch, prompts, shards(), None if progress else log, progress)
                break
            except WorkersRestarted as restarted:
                log(f"  {restarted}: loading the last checkpoint and repeating epoch {epoch}")
                self.workers.load(self._state)
        self.fetch()
        return replies


class RayTrainer:
    """Trains on the Ray Train workers: an epoch's items go through a Ray Data shuffle, one equal share per
    worker, and rank 0's new weights come back to the driver (and reach the samplers, if any)."""

    def __init__(self, cfg: RunConfig, trained: RayTrained, log: Log, progress: Progress | None = None):
        self.cfg, self.trained, self.log = cfg, trained, log
        self.progress = progress or quiet()  # counts the items trained (and a backend's images sampled)

    def train(self, epoch: int, prompts: list[str], items: dict[str, Tensor]):
        metrics, replies, timing = train_on_workers(
            self.cfg, self.trained, epoch, prompts, items, self.log, self.progress
        )
        rewards = [r.get("rewards") for r in replies]
        return metrics, None if rewards[0] is None else torch.cat(rewards), timing


def train_on_workers(cfg, trained: RayTrained, epoch, prompts, items, log, progress: Progress | None = None):
    start = time.perf_counter()
    if progress is not None:  # Ray Data's equal split leaves out the last (count mod workers) items
        progress.expect("trained", len(items["prompt"]) // cfg.train_workers * cfg.train_workers)
    first = [dataset_shards(items, cfg, epoch)]
    shuffled = time.perf_counter()
    # A repeated epoch (its workers lost) takes fresh shards: the first ones were partly read.
    replies = trained.train(
        epoch, prompts, lambda: first.pop() if first else dataset_shards(items, cfg, epoch), log, progress
    )
    trained_at = time.perf_counter()
    # Pipelined, the samplers are busy with the next epoch: each loads new weights with its next call.
    synced = 0.0 if cfg.pipelined() else trained.sync_samplers()
    timing = {"time_shuffle_s": shuffled - start, "time_train_s": trained_at - shuffled}
    timing["time_sync_s"] = synced
    keys = replies[0]["metrics"]
    metrics = {k: sum(r["metrics"][k] for r in replies) / len(replies) for k in keys}
    return metrics, replies, timing
