"""The training loops' shared frame, and the single-process loops (no Ray) built on rlft/epoch.py.

`run_epochs` runs any loop: resume from the checkpoint, one printed line per epoch, checkpoint, MLflow.
The single-process loops are the reference the Ray pipeline (rlft/ray_loop.py) is held to: the same seed
gives the same numbers. Each returns one metrics dict per epoch, with names shared by both algorithms
(reward_mean, reward_std, loss, samples_per_s, epoch_time_s) plus each algorithm's own. Started again on the
same `run_dir`, a loop goes on after the last finished epoch with the same numbers an uninterrupted run
gives, and logs no epoch to MLflow twice.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from diffusers import StableDiffusionPipeline
from torch import Tensor

from rlft.checkpoint import load_checkpoint, replace_folder, save_checkpoint, staging_folder, write_files
from rlft.config import CommonConfig, D3POConfig, DRaFTConfig
from rlft.d3po import D3POLearner
from rlft.draft import DRaFTLearner
from rlft.epoch import (
    Chunk,
    concat_samples,
    d3po_items,
    draft_items,
    epoch_prompts,
    item_order,
    iterate_batches,
    plan_chunks,
    prompts_of,
    reward_metrics,
    sample_chunk,
    sampling_settings,
    stream_generator,
    stream_seed,
)
from rlft.evaluation import (
    before_after_grid,
    eval_chunks,
    eval_metrics,
    eval_settings,
    format_eval,
    save_grid,
)
from rlft.models import load_pipeline
from rlft.policy import Policy
from rlft.rewards import get_reward, reward_names
from rlft.sampling import encode_prompts
from rlft.storage import RunStorage
from rlft.tracking import Tracker

Log = Callable[[str], None]
# Images to show: a grid (N, 3, H, W) in [0, 1] and its prompts, made only when they are logged.
ShowFn = Callable[[], tuple[Tensor, list[str]]]
# One epoch's work, given its number: (the algorithm's own metrics, per-sample rewards (B,), the images
# to show); rewards and images are None for an epoch that samples nothing (training on people's labels).
EpochFn = Callable[[int], tuple[dict[str, float], Tensor | None, ShowFn | None]]
GradSync = Callable[[list[torch.nn.Parameter]], None]
# Scores the current policy on the fixed evaluation set: (rewards (N,) or (N, R), images (N, 3, H, W)).
EvalFn = Callable[[], tuple[Tensor, Tensor]]
GRID_FILE = "before_after.png"


class Trained(Protocol):
    """Where the trained weights live (this process, or Ray Train workers): what a checkpoint holds."""

    def state(self) -> dict:
        """{"weights": the trained weights, "optimizer": the optimizer's state dict}."""

    def load(self, state: dict) -> None: ...

    def adapter_files(self) -> dict[str, bytes]: ...


class LocalTrained:
    def __init__(self, policy: Policy, optimizer: torch.optim.Optimizer):
        self.policy, self.optimizer = policy, optimizer

    def state(self) -> dict:
        return {"weights": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load(self, state: dict) -> None:
        self.policy.load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])

    def adapter_files(self) -> dict[str, bytes]:
        return self.policy.adapter_files()


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def build_policy(
    cfg: CommonConfig, device: torch.device | None = None
) -> tuple[StableDiffusionPipeline, Policy]:
    """The pipeline whose UNet is the trainable policy (sampling through `pipe` uses the current weights)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pipe = load_pipeline(cfg.model, seed=cfg.seed, device=device or pick_device(cfg.device))
    torch.manual_seed(cfg.seed)  # the LoRA A-matrix init
    policy = Policy(
        pipe.unet,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_targets=cfg.lora_targets,
        full_finetune=cfg.full_finetune,
    )
    return pipe, policy


def make_d3po_learner(
    cfg: D3POConfig, pipe: StableDiffusionPipeline, policy: Policy, grad_sync: GradSync | None = None
) -> D3POLearner:
    pipe.scheduler.set_timesteps(cfg.num_steps, device=pipe.device)  # the steps the items were sampled at
    return D3POLearner(
        policy,
        pipe.scheduler,
        lr=cfg.lr,
        beta=cfg.beta,
        clip=cfg.clip,
        guidance_scale=cfg.guidance_scale,
        eta=cfg.eta,
        max_grad_norm=cfg.max_grad_norm,
        grad_sync=grad_sync,
    )


def make_draft_learner(
    cfg: DRaFTConfig, pipe: StableDiffusionPipeline, policy: Policy, grad_sync: GradSync | None = None
) -> DRaFTLearner:
    return DRaFTLearner(
        pipe,
        policy,
        get_reward(cfg.reward, differentiable=True).fn,
        lr=cfg.lr,
        num_steps=cfg.num_steps,
        k=cfg.steps_with_grad,
        lv_copies=cfg.lv_copies if cfg.variant == "draft-lv" else 0,
        guidance_scale=cfg.guidance_scale,
        eta=cfg.eta,
        max_grad_norm=cfg.max_grad_norm,
        grad_sync=grad_sync,
        descend=cfg.reverse_preferences,
    )


def show_chunk(cfg: DRaFTConfig, prompts: list[str], epoch: int) -> Chunk:
    """DRaFT's grid: fresh samples of the updated policy from a stream of their own (training draws none
    of it), since DRaFT-K's samples finish inside the learner."""
    return Chunk(0, prompts[:8], stream_seed(cfg.seed, epoch, "show"))


def format_epoch(epoch: int, m: dict[str, float]) -> str:
    """One line per epoch; an epoch that sampled nothing (people's labels) has no reward or images."""
    parts = [f"epoch {epoch:3d}"]
    if "eval_reward_mean" in m:
        parts.append(format_eval(m))
    if "reward_mean" in m:
        parts.append(f"train reward {m['reward_mean']:.4f} +- {m['reward_std']:.4f}")
    if "reward_margin" in m:  # D3PO: its loss sits near log 2 while the log-ratios are small
        trained = m["pairs"] / max(m["pairs"] + m["ties"], 1) if "pairs" in m else float("nan")
        parts.append(
            f"margin {m['reward_margin']:+.2e} | loss {m['loss']:.4f} | acc {m['preference_accuracy']:.2f}"
        )
        if "pairs" in m:
            parts.append(f"pairs {m['pairs']:.0f} ({trained:.0%} of compared)")
    else:
        parts.append(f"loss {m['loss']:.4f}")
        if "preference_accuracy" in m:
            parts.append(f"acc {m['preference_accuracy']:.2f}")
    parts.append(f"grad {m['grad_norm']:.1e}")
    if "samples_per_s" in m:
        parts.append(f"{m['samples_per_s']:.1f} img/s")
    elif "items_per_s" in m:
        parts.append(f"{m['items_per_s']:.1f} items/s")
    parts.append(f"{m['epoch_time_s']:.1f} s")
    if m.get("nan_rewards"):
        parts.append(f"{m['nan_rewards']:.0f} NaN rewards dropped")
    return " | ".join(parts)


def run_epochs(
    cfg: CommonConfig,
    run_dir: Path,
    trained: Trained,
    one_epoch: EpochFn,
    tracker: Tracker | None,
    log: Log,
    evaluate: EvalFn | None = None,
) -> list[dict[str, float]]:
    """Resume from run_dir's checkpoint if there is one, then run, checkpoint and log the remaining epochs.

    With `evaluate` (and cfg.eval_every > 0), the base model is scored on the fixed evaluation set first
    (again on resume: it is deterministic), then the policy after every cfg.eval_every-th epoch and the last,
    paired against the base; the first and last evaluations' images end in run_dir/before_after.png.
    """
    checkpoint = Path(run_dir) / "checkpoint"
    storage = RunStorage(cfg.storage, Path(run_dir).name) if cfg.storage else None  # <storage>/<run>/
    last, history, state = load_checkpoint(checkpoint, storage)
    base = evaluate() if evaluate is not None and cfg.eval_every else None  # before the state is loaded
    if base is not None:
        log(
            f"evaluation set: {len(base[0])} images of {cfg.eval_prompts!r} | base model "
            f"{format_base(base[0])}"
        )
    if state is not None:
        trained.load(state)
        log(f"resuming {run_dir} after epoch {last}")
    if tracker is not None:  # epochs checkpointed but not logged (a crash between the two) are logged now
        logged = set(tracker.logged_epochs())
        for epoch, metrics in enumerate(history):
            if epoch not in logged:
                tracker.log_epoch(epoch, metrics)
    latest = None  # the last evaluation's (rewards, images)
    for epoch in range(last + 1, cfg.epochs):
        start = time.perf_counter()
        own, rewards, show = one_epoch(epoch)
        elapsed = time.perf_counter() - start
        if rewards is None:
            metrics = own | {"epoch_time_s": elapsed}
        else:
            metrics = own | reward_metrics(rewards, elapsed, reward_names(cfg.reward))
        if base is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1):
            latest = evaluate()
            metrics |= eval_metrics(latest[0], base[0], reward_names(cfg.reward))
            metrics["eval_time_s"] = time.perf_counter() - start - elapsed
        history.append(metrics)
        log(format_epoch(epoch, metrics))
        # Checkpoint, then log: after a crash in between, the epoch is logged from the checkpoint.
        adapter = trained.adapter_files()
        save_checkpoint(
            checkpoint, epoch=epoch, history=history, state=trained.state(), adapter=adapter, storage=storage
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
    if base is not None:
        latest = latest or evaluate()  # a finished run started again trains nothing: evaluate it now
        grid = save_grid(before_after_grid(base[1], latest[1]), Path(run_dir) / GRID_FILE)
        log(f"before/after grid (base model and trained policy, same prompts and noise): {grid}")
        if tracker is not None:
            tracker.log_file(grid, "")
    return history


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


def local_evaluate(pipe: StableDiffusionPipeline, cfg: CommonConfig) -> EvalFn:
    """Scores the pipeline's current policy on the fixed evaluation set, in this process."""
    reward = get_reward(cfg.reward)

    def evaluate() -> tuple[Tensor, Tensor]:
        samples = [sample_chunk(pipe, chunk, eval_settings(cfg)) for chunk in eval_chunks(cfg)]
        images = torch.cat([s["images"] for s in samples])
        prompts = [p for chunk in eval_chunks(cfg) for p in chunk.prompts]
        with torch.no_grad():
            return reward.fn(images, prompts).float(), images

    return evaluate


def sample_epoch(pipe: StableDiffusionPipeline, cfg: CommonConfig, prompts: list[str], epoch: int) -> dict:
    settings = sampling_settings(cfg)
    chunks = plan_chunks(prompts, cfg.sample_batch, cfg.seed, epoch)
    return concat_samples([sample_chunk(pipe, chunk, settings) for chunk in chunks])


def train_d3po(
    cfg: D3POConfig, run_dir: Path, tracker: Tracker | None = None, log: Log = print
) -> list[dict[str, float]]:
    """D3PO: pairs sharing x_T, preferred by reward order, per-step DPO against the adapter-off reference."""
    pipe, policy = build_policy(cfg)
    reward = get_reward(cfg.reward)
    learner = make_d3po_learner(cfg, pipe, policy)

    def one_epoch(epoch: int):
        start = time.perf_counter()
        prompts = epoch_prompts(cfg, epoch)
        samples = sample_epoch(pipe, cfg, prompts, epoch)
        sampled = time.perf_counter()
        rewards = reward.fn(samples["images"], prompts_of(prompts, samples["group"]))
        items, pairing = d3po_items(samples, rewards, reverse=cfg.reverse_preferences, pairs=cfg.pairs)
        scored = time.perf_counter()
        if pairing["pairs"]:
            items = {k: v.to(pipe.device) for k, v in items.items()}
            batches = iterate_batches(items, cfg.batch_size, item_order(len(items["prompt"]), cfg, epoch))
            metrics = learner.train_epoch(batches, *encode_prompts(pipe, prompts))
        else:  # every pair tied: nothing to learn from this epoch
            metrics = {"loss": float("nan"), "preference_accuracy": float("nan"), "grad_norm": 0.0}
        timing = {
            "time_sample_s": sampled - start,
            "time_score_s": scored - sampled,
            "time_train_s": time.perf_counter() - scored,
        }
        images = samples["images"][:: cfg.group_size]  # one image per group for the grid
        return metrics | pairing | timing, rewards, lambda: (images, prompts)

    trained = LocalTrained(policy, learner.optimizer)
    return run_epochs(cfg, run_dir, trained, one_epoch, tracker, log, local_evaluate(pipe, cfg))


def train_draft(
    cfg: DRaFTConfig, run_dir: Path, tracker: Tracker | None = None, log: Log = print
) -> list[dict[str, float]]:
    """DRaFT-K / DRaFT-LV / full DRaFT on a differentiable reward."""
    pipe, policy = build_policy(cfg)
    reward_fn = get_reward(cfg.reward, differentiable=True).fn
    learner = make_draft_learner(cfg, pipe, policy)

    def one_epoch(epoch: int):
        prompts = epoch_prompts(cfg, epoch)
        samples = sample_epoch(pipe, cfg, prompts, epoch)
        items = {k: v.to(pipe.device) for k, v in draft_items(samples).items()}
        batches = iterate_batches(items, cfg.batch_size, item_order(len(prompts), cfg, epoch))
        generator = stream_generator(cfg.seed, epoch, "train", 0, pipe.device)
        metrics, rewards = learner.train_epoch(batches, *encode_prompts(pipe, prompts), generator, prompts)
        if rewards is None:  # DRaFT-LV: the sampler finished the samples
            with torch.no_grad():
                rewards = reward_fn(samples["images"], prompts_of(prompts, samples["group"])).float()

        def show():
            settings = sampling_settings(cfg) | {"skip_last": 0}
            chunk = show_chunk(cfg, prompts, epoch)
            return sample_chunk(pipe, chunk, settings)["images"], chunk.prompts

        return metrics, rewards, show

    trained = LocalTrained(policy, learner.optimizer)
    return run_epochs(cfg, run_dir, trained, one_epoch, tracker, log, local_evaluate(pipe, cfg))
