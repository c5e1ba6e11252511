"""Ray Train workers held for a whole run: one long-lived `TorchTrainer.fit()`, fed epoch by epoch.

A new `fit()` per epoch costs tens of seconds of start-up (DESIGN.md), so `fit()` runs once, in a driver
thread, and its train function serves commands until told to stop. Each worker reads its own queue;
replies come back on one shared queue:
  publish            rank 0 puts its weights, optimizer state and adapter in the object store
  load, state        every worker loads the trained state (a resumed run)
  epoch, e, prompts, shard
                     train on this worker's shard of the epoch's items (D3PO: (pair, timestep) items;
                     DRaFT: starting latents), gradients averaged across workers after every backward
  stop               return from the train function
After every command rank 0 publishes again, so the driver always holds references to the newest weights:
one `ray.put` of the LoRA state dict per update, which every sampler then loads.
"""

import threading
import time
import traceback
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.queue import Empty, Queue

from rlft.actors import use_threads
from rlft.config import D3POConfig, DRaFTConfig
from rlft.epoch import stream_generator
from rlft.loop import LocalTrained, build_policy, make_d3po_learner, make_draft_learner
from rlft.sampling import encode_prompts


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
    """The train function: build the policy once, then serve commands until `stop`."""
    cfg: D3POConfig | DRaFTConfig = config["cfg"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    use_threads(cfg)
    device = ray.train.torch.get_device() if cfg.worker_gpus else torch.device("cpu")
    pipe, policy = build_policy(cfg, device)
    sync = average_gradients if world > 1 else None
    d3po = isinstance(cfg, D3POConfig)
    learner = (make_d3po_learner if d3po else make_draft_learner)(cfg, pipe, policy, sync)
    trained = LocalTrained(policy, learner.optimizer)

    def train(epoch: int, prompts: list[str], shard) -> dict:
        embeds, uncond = encode_prompts(pipe, prompts)
        batches = shard.iter_torch_batches(batch_size=cfg.batch_size // world, device=device)
        if d3po:
            return {"metrics": learner.train_epoch(batches, embeds, uncond)}
        generator = stream_generator(cfg.seed, epoch, "train", rank, device)
        metrics, rewards = learner.train_epoch(batches, embeds, uncond, generator)
        return {"metrics": metrics, "rewards": rewards}

    commands, replies = config["commands"][rank], config["replies"]
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
            replies.put({"rank": rank, "error": traceback.format_exc()})
            raise
        replies.put({"rank": rank, **reply})


class TrainWorkers:
    """The driver's handle on the train workers: send a command to all, wait for every reply."""

    def __init__(self, cfg: D3POConfig | DRaFTConfig, storage: Path, name: str):
        self.count = cfg.train_workers
        self.commands = [Queue() for _ in range(self.count)]
        self.replies = Queue()
        resources = {"CPU": cfg.actor_cpus} | ({"GPU": cfg.worker_gpus} if cfg.worker_gpus else {})
        self.trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"cfg": cfg, "commands": self.commands, "replies": self.replies},
            scaling_config=ScalingConfig(
                num_workers=self.count, use_gpu=cfg.worker_gpus > 0, resources_per_worker=resources
            ),
            run_config=RunConfig(name=name, storage_path=str(Path(storage).resolve())),
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._fit, name="ray-train-fit", daemon=True)
        self.thread.start()
        self.latest: dict = {}

    def _fit(self) -> None:
        try:
            self.trainer.fit()
        except BaseException as error:  # noqa: B036 - reported to the driver thread by `ask`
            self.error = error

    def ask(self, commands: list[dict], wait_log=None) -> list[dict]:
        """Send command i to worker i; the replies in rank order. A worker's failure raises here."""
        for queue, command in zip(self.commands, commands, strict=True):
            queue.put(command)
        replies, start = [], time.perf_counter()
        while len(replies) < self.count:
            try:
                reply = self.replies.get(timeout=1.0)
            except Empty:
                if not self.thread.is_alive():
                    raise RuntimeError(f"the train workers stopped: {self.error}") from self.error
                if wait_log and int(time.perf_counter() - start) % 30 == 29:
                    wait_log(f"  waiting for train workers: {len(replies)}/{self.count} done")
                continue
            if "error" in reply:
                raise RuntimeError(f"train worker {reply['rank']} failed:\n{reply['error']}")
            replies.append(reply)
        replies.sort(key=lambda r: r["rank"])
        self.latest = replies[0]
        return replies

    def publish(self) -> None:
        self.ask([{"kind": "publish"}] * self.count)

    def load(self, state: dict) -> None:
        self.ask([{"kind": "load", "state": [ray.put(state)]}] * self.count)

    def train(self, epoch: int, prompts: list[str], shards: list, wait_log=None) -> list[dict]:
        commands = [{"kind": "epoch", "epoch": epoch, "prompts": prompts, "shard": s} for s in shards]
        return self.ask(commands, wait_log)

    def weights_ref(self) -> ray.ObjectRef:
        return self.latest["weights"][0]

    def state(self) -> dict:
        return {
            "weights": ray.get(self.latest["weights"][0]),
            "optimizer": ray.get(self.latest["optimizer"][0]),
        }

    def adapter_files(self) -> dict[str, bytes]:
        return ray.get(self.latest["adapter"][0])

    def stop(self, timeout_s: float = 60.0) -> None:
        for queue in self.commands:
            queue.put({"kind": "stop"})
        self.thread.join(timeout_s)
