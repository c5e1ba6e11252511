"""The single-process training loops (no Ray): sample, score, update, one printed line per epoch.

They are the reference the Ray jobs are held to: the same seed gives the same numbers. Each returns one
metrics dict per epoch, with names shared by both algorithms (reward_mean, reward_std, loss,
samples_per_s, epoch_time_s) plus each algorithm's own. Every finished epoch is checkpointed under
`run_dir`; started again on the same `run_dir`, a loop goes on after the last finished epoch with the
same numbers an uninterrupted run gives, and logs no epoch to MLflow twice.
"""

import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from torch import Tensor

from rlft.checkpoint import load_checkpoint, save_checkpoint
from rlft.config import CommonConfig, D3POConfig, DRaFTConfig
from rlft.d3po import D3POLearner, pair_items, pairs_from_rewards
from rlft.draft import DRaFTLearner
from rlft.models import load_pipeline
from rlft.policy import Policy
from rlft.prompts import draw_prompts
from rlft.rewards import get_reward
from rlft.sampling import sample_trajectories
from rlft.tracking import Tracker

Log = Callable[[str], None]
# Images to show: a grid (N, 3, H, W) in [0, 1] and its prompts, made only when they are logged.
ShowFn = Callable[[], tuple[Tensor, list[str]]]
# One epoch's work: (the algorithm's own metrics, per-sample rewards (B,), the images to show).
EpochFn = Callable[[], tuple[dict[str, float], Tensor, ShowFn]]


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def build_policy(cfg: CommonConfig) -> tuple[StableDiffusionPipeline, Policy]:
    """The pipeline whose UNet is the trainable policy (sampling through `pipe` uses the current weights)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pipe = load_pipeline(cfg.model, seed=cfg.seed, device=pick_device(cfg.device))
    torch.manual_seed(cfg.seed)  # the LoRA A-matrix init
    policy = Policy(
        pipe.unet,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_targets=cfg.lora_targets,
        full_finetune=cfg.full_finetune,
    )
    return pipe, policy


def seeded_generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """The run's two random streams: sampling noise (on the model's device) and prompt/item order.

    Both loops (and any distributed version held to their numbers) must draw them the same way.
    """
    return {
        "noise": torch.Generator(device).manual_seed(seed),
        "order": torch.Generator().manual_seed(seed + 1),
    }


def epoch_metrics(metrics: dict[str, float], rewards: Tensor, elapsed: float) -> dict[str, float]:
    """An epoch's own metrics plus the reward and throughput metrics both algorithms share."""
    n = rewards.numel()
    std = rewards.std().item() if n > 1 else 0.0
    return metrics | {
        "reward_mean": rewards.mean().item(),
        "reward_std": std,
        "reward_se": std / n**0.5,
        "samples_per_s": n / elapsed,
        "epoch_time_s": elapsed,
    }


def format_epoch(epoch: int, m: dict[str, float]) -> str:
    extra = f" | acc {m['preference_accuracy']:.2f}" if "preference_accuracy" in m else ""
    return (
        f"epoch {epoch:3d} | reward {m['reward_mean']:.4f} +- {m['reward_std']:.4f} | loss {m['loss']:.4f}"
        f"{extra} | grad {m['grad_norm']:.1e} | {m['samples_per_s']:.1f} img/s | {m['epoch_time_s']:.1f} s"
    )


def run_epochs(
    cfg: CommonConfig,
    run_dir: Path,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    one_epoch: EpochFn,
    tracker: Tracker | None,
    log: Log,
) -> list[dict[str, float]]:
    """Resume from run_dir's checkpoint if there is one, then run, checkpoint and log the remaining epochs."""
    checkpoint = Path(run_dir) / "checkpoint"
    last, history = load_checkpoint(checkpoint, policy=policy, optimizer=optimizer, generators=generators)
    if last >= 0:
        log(f"resuming {run_dir} after epoch {last}")
    if tracker is not None:  # epochs checkpointed but not logged (a crash between the two) are logged now
        logged = set(tracker.logged_epochs())
        for epoch, metrics in enumerate(history):
            if epoch not in logged:
                tracker.log_epoch(epoch, metrics)
    for epoch in range(last + 1, cfg.epochs):
        start = time.perf_counter()
        own, rewards, show = one_epoch()
        metrics = epoch_metrics(own, rewards, time.perf_counter() - start)
        history.append(metrics)
        log(format_epoch(epoch, metrics))
        # Checkpoint, then log: after a crash in between, the epoch is logged from the checkpoint.
        save_checkpoint(
            checkpoint,
            epoch=epoch,
            history=history,
            policy=policy,
            optimizer=optimizer,
            generators=generators,
        )
        if tracker is not None:
            tracker.log_epoch(epoch, metrics)
            if epoch % cfg.image_every == 0 or epoch == cfg.epochs - 1:
                tracker.log_images(epoch, *show())
    policy.save(Path(run_dir) / "adapter")
    if tracker is not None:
        tracker.log_folder(Path(run_dir) / "adapter", "adapter")
    return history


def train_d3po(
    cfg: D3POConfig, run_dir: Path, tracker: Tracker | None = None, log: Log = print
) -> list[dict[str, float]]:
    """D3PO: pairs sharing x_T, preferred by reward order, per-step DPO against the adapter-off reference."""
    pipe, policy = build_policy(cfg)
    reward = get_reward(cfg.reward)
    learner = D3POLearner(
        policy,
        pipe.scheduler,
        lr=cfg.lr,
        beta=cfg.beta,
        clip=cfg.clip,
        guidance_scale=cfg.guidance_scale,
        eta=cfg.eta,
        max_grad_norm=cfg.max_grad_norm,
    )
    generators = seeded_generators(cfg.seed, pipe.device)
    noise_gen, order_gen = generators["noise"], generators["order"]

    def one_epoch():
        prompts = draw_prompts(cfg.prompts, cfg.pairs_per_epoch, order_gen)
        trajectories = sample_trajectories(
            pipe,
            prompts,
            group_size=cfg.group_size,
            num_steps=cfg.num_steps,
            guidance_scale=cfg.guidance_scale,
            eta=cfg.eta,
            resolution=cfg.resolution,
            generator=noise_gen,
        )
        rewards = reward.fn(trajectories["images"])
        index_w, index_l, ties = pairs_from_rewards(rewards, trajectories["group"].cpu())
        if len(index_w):
            items = pair_items(trajectories, index_w, index_l)
            metrics = learner.train_epoch(
                items, trajectories["uncond_embeds"], batch_size=cfg.batch_size, generator=order_gen
            )
        else:  # every pair tied: nothing to learn from this epoch
            metrics = {"loss": float("nan"), "preference_accuracy": float("nan"), "grad_norm": 0.0}
        images = trajectories["images"][:: cfg.group_size]  # one image per group for the grid
        return metrics | {"ties": ties}, rewards, lambda: (images, prompts)

    return run_epochs(cfg, run_dir, policy, learner.optimizer, generators, one_epoch, tracker, log)


def train_draft(
    cfg: DRaFTConfig, run_dir: Path, tracker: Tracker | None = None, log: Log = print
) -> list[dict[str, float]]:
    """DRaFT-K / DRaFT-LV / full DRaFT on a differentiable reward."""
    pipe, policy = build_policy(cfg)
    reward_fn = get_reward(cfg.reward, differentiable=True).fn
    k = cfg.steps_with_grad
    lv_copies = cfg.lv_copies if cfg.variant == "draft-lv" else 0
    learner = DRaFTLearner(
        pipe,
        policy,
        reward_fn,
        lr=cfg.lr,
        num_steps=cfg.num_steps,
        k=k,
        lv_copies=lv_copies,
        guidance_scale=cfg.guidance_scale,
        eta=cfg.eta,
        max_grad_norm=cfg.max_grad_norm,
    )
    generators = seeded_generators(cfg.seed, pipe.device)
    noise_gen, order_gen = generators["noise"], generators["order"]

    def one_epoch():
        steps, rewards = [], []
        for _ in range(cfg.steps_per_epoch):
            prompts = draw_prompts(cfg.prompts, cfg.batch_size, order_gen)
            trajectories = sample_trajectories(
                pipe,
                prompts,
                num_steps=cfg.num_steps,
                guidance_scale=cfg.guidance_scale,
                eta=cfg.eta,
                resolution=cfg.resolution,
                generator=noise_gen,
                skip_last=0 if lv_copies else k,
                with_logprob=False,
            )
            metrics, sample_rewards = learner.step(trajectories, noise_gen)
            steps.append(metrics)
            rewards.append(sample_rewards)
        metrics = {key: sum(s[key] for s in steps) / len(steps) for key in steps[0]}

        def show():
            # DRaFT-K's samples finish inside the learner: show fresh ones of the updated policy, from a
            # generator of their own so that showing them changes no training randomness.
            images = sample_trajectories(
                pipe,
                prompts,
                num_steps=cfg.num_steps,
                guidance_scale=cfg.guidance_scale,
                eta=cfg.eta,
                resolution=cfg.resolution,
                generator=torch.Generator(pipe.device).manual_seed(cfg.seed),
                with_logprob=False,
            )["images"]
            return images, prompts

        return metrics, torch.cat(rewards), show

    return run_epochs(cfg, run_dir, policy, learner.optimizer, generators, one_epoch, tracker, log)
