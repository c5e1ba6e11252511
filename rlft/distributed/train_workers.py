"""Ray Train workers held for a whole run: one long-lived `TorchTrainer.fit()`, fed epoch by epoch.

A new `fit()` per epoch costs tens of seconds of start-up (35-46 s with Ray 2.60 here), so `fit()` runs once,
in a driver thread, and its train function serves commands until told to stop. Each worker reads its own box
of one mailbox actor (rlft/distributed/mailbox.py); replies come back in one shared box:
  join, generation   the first command a (re)started group takes: the driver's count of groups so far
  publish            rank 0 puts its weights, optimizer state and adapter in the object store
  load, state        every worker loads the trained state (a resumed run, or a restarted group)
  epoch, e, prompts, shard
                     train on this worker's shard of the epoch's items (D3PO: (pair, timestep) items;
                     DRaFT: starting latents), gradients averaged across workers after every backward
  stop               return from the train function
After every command rank 0 publishes again, so the driver always holds references to the newest weights.
While it trains, a worker puts {"kind": "progress", "items": trained so far} in the replies box at most every
PROGRESS_EVERY_S seconds, for the driver's progress display (a tiny model's epoch sends none).

Faults: when a worker dies (its node lost), Train starts the whole group again (`FailureConfig`), up to
`max_failures` times. A new group says "started" and skips every command until a `join`, so nothing meant
for the lost group is taken; replies carry their group's generation, so late ones from the lost group are
dropped. The driver then raises `WorkersRestarted`, and its caller loads the last checkpoint and repeats
the epoch: every random draw of an epoch is seeded, so the repeat gives the numbers the lost one would have.
The mailbox lives on the driver's node, so it outlives any worker node.

The model and algorithm code is imported inside `worker_loop`, not by this module: Train's controller
unpickles the train function, so a module-level import would load diffusers and peft there too.
"""

import os
import threading
import time
import traceback
from pathlib import Path
from queue import Empty

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rlft.configs import RunConfig
from rlft.distributed.actors import custom_resource, use_threads
from rlft.distributed.mailbox import open_boxes
from rlft.epoch import stream_generator
from rlft.progress import Progress, counted

PROGRESS_EVERY_S = 5.0  # how often a worker tells the driver how many items it has trained


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce the gradients of `params` as one flat buffer and divide by the number of workers."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for p, g in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        p.grad = g.view_as(p)


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def worker_loop(config: dict) -> None:
    """The train function: build the policy once, join the driver, then serve commands until `stop`."""
    from rlft.algorithms.backend import EpochInputs
    from rlft.algorithms.registry import algorithm_of
    from rlft.diffusion.policy import LocalTrained, build_policy
    from rlft.diffusion.sampling import encode_prompts

    cfg: RunConfig = config["cfg"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    use_threads(cfg)
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    pipe, policy = build_policy(cfg, device)
    sync = average_gradients if world > 1 else None
    algorithm = algorithm_of(cfg)
    learner = algorithm.make_learner(cfg, pipe, policy, sync)
    trained = LocalTrained(policy, learner.optimizer)

    def train(epoch: int, prompts: list[str], shard) -> dict:
        cond, uncond = encode_prompts(pipe, prompts)
        batches = shard.iter_torch_batches(batch_size=cfg.batch_size // world, device=device)
        reporter = ProgressReporter(replies, rank, generation)
        generator = stream_generator(cfg.seed, epoch, "train", rank, device)
        trained_batches = counted(batches, reporter.add)
        inputs = EpochInputs(cond, uncond, generator, prompts)
        metrics, rewards = algorithm.train(learner, trained_batches, inputs)
        return {"metrics": metrics, "rewards": rewards, "items": reporter.done}

    commands, replies = config["commands"][rank], config["replies"]
    replies.put({"rank": rank, "kind": "started"})
    while (command := commands.get())["kind"] != "join":  # what was meant for a lost group
        pass
    generation = command["generation"]
    while (command := commands.get())["kind"] != "stop":
        try:
            reply = {}
            if command["kind"] == "load":
                trained.load(ray.get(command["state"][0]))
            elif command["kind"] == "epoch":
                reply = train(command["epoch"], command["prompts"], command["shard"])
            if rank == 0:
                state = _to_cpu(trained.state())
                reply["weights"] = [ray.put(state["weights"])]
                reply["optimizer"] = [ray.put(state["optimizer"])]
                reply["adapter"] = [ray.put(trained.adapter_files())]
        except Exception:
            replies.put({"rank": rank, "generation": generation, "error": traceback.format_exc()})
            raise
        replies.put({"rank": rank, "generation": generation, **reply})


class ProgressReporter:
    """A worker's count of the items it trained this epoch, told to the driver when `every_s` seconds have
    passed since it last was (the first time: since the epoch began); the epoch's reply carries the total."""

    def __init__(self, replies, rank: int, generation: int, every_s: float = PROGRESS_EVERY_S):
        self.replies, self.rank, self.generation, self.every_s = replies, rank, generation, every_s
        self.done, self.sent = 0, time.monotonic()

    def add(self, count: int) -> None:
        self.done += count
        if time.monotonic() - self.sent >= self.every_s:
            progress = {"kind": "progress", "items": self.done}
            self.replies.put({"rank": self.rank, "generation": self.generation, **progress})
            self.sent = time.monotonic()


class WorkersRestarted(Exception):
    """The train workers were lost and a new group started: load the last checkpoint, repeat the epoch."""


class TrainWorkers:
    """The driver's handle on the train workers: send a command to all, wait for every reply."""

    def __init__(self, cfg: RunConfig, storage: Path, name: str, wait: bool = True):
        """Start the group; with `wait`, return once every worker has started (else call `wait_started`)."""
        self.count, self.ready_timeout_s = cfg.train_workers, cfg.ready_timeout_s
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        options = {"num_cpus": 0, "scheduling_strategy": here}
        *self.commands, self.replies = open_boxes([*map(str, range(self.count)), "replies"], **options)
        resources = {"CPU": cfg.actor_cpus} | ({"GPU": cfg.worker_gpus} if cfg.worker_gpus else {})
        resources |= custom_resource(cfg.worker_resource)
        # Train gives up on a group that cannot start in this time (its default, 60 s, is shorter than an
        # autoscaler takes to add a GPU node); it reads the variable from the driver's environment.
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(cfg.ready_timeout_s))
        self.trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"cfg": cfg, "commands": self.commands, "replies": self.replies},
            scaling_config=ScalingConfig(
                num_workers=self.count, use_gpu=cfg.worker_gpus > 0, resources_per_worker=resources
            ),
            run_config=ray.train.RunConfig(
                name=name,
                storage_path=str(Path(storage).resolve()),
                # A failure limit on both counters: a node that never comes back fails the run.
                failure_config=FailureConfig(
                    max_failures=cfg.max_failures,
                    max_preemption_failures=cfg.max_failures,
                    controller_failure_limit=cfg.max_failures,
                ),
            ),
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._fit, name="ray-train-fit", daemon=True)
        self.thread.start()
        self.latest: dict = {}
        self.generation, self.restarts = 0, 0
        if wait:
            self.wait_started()

    def wait_started(self) -> None:
        """Return once every worker of the first group has built its model and joined."""
        self._join([])

    def _fit(self) -> None:
        try:
            self.trainer.fit()
        except BaseException as error:  # noqa: B036 - reported to the driver thread by `ask`
            self.error = error

    def _next_reply(self, waited_s: float, timeout_s: float | None, what: str) -> dict | None:
        try:
            return self.replies.get(timeout=1.0)
        except Empty:
            if not self.thread.is_alive():
                raise RuntimeError(f"the train workers stopped: {self.error}") from self.error
            if timeout_s is not None and waited_s > timeout_s:
                raise TimeoutError(
                    f"the train workers did not {what} within ready_timeout_s={self.ready_timeout_s:g} s: "
                    "the cluster has no room for them (see `ray status`)"
                ) from None
            return None

    def _join(self, started: list[int]) -> None:
        """Wait until every worker of a new group has started (`started`: ranks already heard), join it."""
        ranks, start = set(started), time.perf_counter()
        while len(ranks) < self.count:
            reply = self._next_reply(time.perf_counter() - start, self.ready_timeout_s, "start")
            if reply is not None and reply.get("kind") == "started":
                ranks.add(reply["rank"])
        self.generation += 1
        for box in self.commands:
            box.put({"kind": "join", "generation": self.generation})

    def ask(self, commands: list[dict], wait_log=None, progress: Progress | None = None) -> list[dict]:
        """Send command i to worker i; the replies in rank order. A worker's error raises RuntimeError; a
        lost and restarted group raises WorkersRestarted (the new group has joined and holds base weights).
        The workers' counts of items trained go to `progress`."""
        for box, command in zip(self.commands, commands, strict=True):
            box.put(command)
        replies, start, trained = [], time.perf_counter(), {}  # trained: {rank: items so far}
        while len(replies) < self.count:
            reply = self._next_reply(time.perf_counter() - start, None, "answer")
            if reply is None:
                if wait_log and int(time.perf_counter() - start) % 30 == 29:
                    wait_log(f"  waiting for train workers: {len(replies)}/{self.count} done")
                if progress is not None:
                    progress.tick()
                continue
            if reply.get("kind") == "progress":
                if progress is not None and reply["generation"] == self.generation:
                    progress.advance("trained", reply["items"] - trained.get(reply["rank"], 0))
                    trained[reply["rank"]] = reply["items"]
                continue
            if reply.get("kind") == "started":
                self._join([reply["rank"]])
                self.restarts += 1
                raise WorkersRestarted(f"train workers started again (restart {self.restarts})")
            if reply["generation"] != self.generation:
                continue  # a late reply of a lost group
            if "error" in reply:
                raise RuntimeError(f"train worker {reply['rank']} failed:\n{reply['error']}")
            replies.append(reply)
            if progress is not None and "items" in reply:  # the rest of the worker's share
                progress.advance("trained", reply["items"] - trained.get(reply["rank"], 0))
        replies.sort(key=lambda r: r["rank"])
        self.latest = replies[0]
        return replies

    def publish(self) -> None:
        self.ask([{"kind": "publish"}] * self.count)

    def load(self, state: dict) -> None:
        self.ask([{"kind": "load", "state": [ray.put(state)]}] * self.count)

    def train(
        self, epoch: int, prompts: list[str], shards: list, wait_log=None, progress: Progress | None = None
    ) -> list[dict]:
        commands = [{"kind": "epoch", "epoch": epoch, "prompts": prompts, "shard": s} for s in shards]
        return self.ask(commands, wait_log, progress)

    def state(self) -> dict:
        return {
            "weights": ray.get(self.latest["weights"][0]),
            "optimizer": ray.get(self.latest["optimizer"][0]),
        }

    def adapter_files(self) -> dict[str, bytes]:
        return ray.get(self.latest["adapter"][0])

    def stop(self, timeout_s: float = 60.0) -> None:
        for box in self.commands:
            box.put({"kind": "stop"})
        self.thread.join(timeout_s)
