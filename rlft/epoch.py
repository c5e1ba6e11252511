"""One epoch in pieces that both training loops share: the single-process one and the Ray one.

An epoch: draw its prompts (`epoch_prompts`); cut them into fixed-size chunks (`plan_chunks`), each sampled
by `sample_chunk` with its own noise seed, whichever sampler takes it; score the images, dropping samples
whose reward is NaN; turn the samples into training items (rlft/algorithms/pairs.py's `d3po_items`: one per
(pair, timestep); rlft/algorithms/draft.py's `draft_items`: one per sample); feed the items in a seeded
random order to a learner. Items carry a `prompt` index into the epoch's prompts instead of prompt
embeddings, so what crosses between processes stays small: the learner encodes the epoch's prompts once.

Every random draw comes from a generator seeded by (run seed, epoch, stream, index). An epoch's numbers
therefore depend neither on how many samplers share its work nor on whether the run was resumed, and a
checkpoint needs no generator state.

The sampling code (diffusers) is imported only by `sample_chunk`: the driver, the Train controller and the
scorers use this module's plans and seeds, and a process that imports diffusers pays seconds of CPU for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from rlft.configs import RunConfig, SamplingConfig
from rlft.prompts import draw_prompts

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

STREAMS = ("prompts", "noise", "shuffle", "train", "show", "eval", "timesteps", "noised")


def stream_seed(seed: int, epoch: int, stream: str, index: int = 0) -> int:
    """A 32-bit seed for one random stream of one epoch (numpy's SeedSequence mixes the four numbers)."""
    entropy = [seed, epoch, STREAMS.index(stream), index]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def stream_generator(
    seed: int, epoch: int, stream: str, index: int = 0, device: torch.device | str = "cpu"
) -> torch.Generator:
    return torch.Generator(device).manual_seed(stream_seed(seed, epoch, stream, index))


def epoch_prompts(cfg: SamplingConfig, epoch: int) -> list[str]:
    """The epoch's prompts (`cfg.prompts_per_epoch` of them), drawn from the epoch's own stream."""
    return draw_prompts(cfg.prompts, cfg.prompts_per_epoch, stream_generator(cfg.seed, epoch, "prompts"))


@dataclass(frozen=True)
class Chunk:
    """A sampler's unit of work: consecutive prompts of an epoch and the seed of their noise."""

    start: int  # the first prompt's index in the epoch's prompts
    prompts: list[str]
    seed: int


def plan_chunks(prompts: list[str], per_chunk: int, seed: int, epoch: int) -> list[Chunk]:
    return [
        Chunk(start, prompts[start : start + per_chunk], stream_seed(seed, epoch, "noise", start))
        for start in range(0, len(prompts), per_chunk)
    ]


def sample_chunk(pipe: StableDiffusionPipeline, chunk: Chunk, settings: dict) -> dict[str, Tensor]:
    """Sample a chunk; CPU tensors: latents (B, S+1 or 1, C, h, w), timesteps (S,), group (B,) indexing
    the epoch's prompts, images (B, 3, H, W) when every step ran, and with `keep_log_probs` the sampler's
    log-probability of each step taken, log_probs (B, S)."""
    from rlft.diffusion.sampling import sample_trajectories

    settings = dict(settings)
    last_only = settings.pop("last_only")
    keep_log_probs = settings.pop("keep_log_probs", False)
    generator = torch.Generator(pipe.device).manual_seed(chunk.seed)
    out = sample_trajectories(pipe, chunk.prompts, generator=generator, **settings)
    samples = {
        "latents": out["latents"][:, -1:] if last_only else out["latents"],
        "timesteps": out["timesteps"],
        "group": out["group"] + chunk.start,
    }
    if "images" in out:
        samples["images"] = out["images"]
    if keep_log_probs:
        samples["log_probs"] = out["log_probs"]
    return {k: v.cpu() for k, v in samples.items()}


def concat_samples(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Chunks' samples in chunk order, as one batch."""
    joined = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "timesteps"}
    return joined | {"timesteps": parts[0]["timesteps"]}


def prompts_of(prompts: list[str], group: Tensor) -> list[str]:
    """Each sample's prompt, for rewards that score an image against it: group (B,) indexes `prompts`."""
    return [prompts[i] for i in group.tolist()]


def chunk_prompts(chunk: Chunk, group_size: int) -> list[str]:
    """The prompt of each of a chunk's images, in the order its sampler returns them (groups adjacent)."""
    return [prompt for prompt in chunk.prompts for _ in range(group_size)]


def item_order(count: int, cfg: RunConfig, epoch: int) -> Tensor:
    """The order the single-process loop trains items in: seeded random, or as made with shuffle off."""
    if not cfg.shuffle:
        return torch.arange(count)
    return torch.randperm(count, generator=stream_generator(cfg.seed, epoch, "shuffle"))


def iterate_batches(items: dict[str, Tensor], batch_size: int, order: Tensor) -> Iterator[dict[str, Tensor]]:
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield {k: v[index] for k, v in items.items()}


def reward_metrics(rewards: Tensor, elapsed: float, names: list[str] | None = None) -> dict[str, float]:
    """The reward and throughput metrics both algorithms log; samples with a NaN reward are counted.

    rewards (B,), or (B, R) for R rewards named `names` (default 0, 1, ...): reward_mean,
    reward_std and reward_se are then those of the first reward, each reward also gets reward_<name>_mean,
    and a sample with a NaN on any reward is left out of all of them (as it is left out of every pair).
    """
    several = rewards.ndim == 2
    rewards = rewards[:, None] if rewards.ndim == 1 else rewards  # (B, R)
    kept = rewards[torch.isfinite(rewards).all(dim=1)]  # (n, R)
    n = len(kept)
    std = kept[:, 0].std().item() if n > 1 else 0.0
    metrics = {
        "reward_mean": kept[:, 0].mean().item() if n else float("nan"),
        "reward_std": std,
        "reward_se": std / max(n, 1) ** 0.5,
        "nan_rewards": float(len(rewards) - n),
        "samples_per_s": len(rewards) / elapsed,
        "epoch_time_s": elapsed,
    }
    if several:
        names = names or [str(r) for r in range(rewards.shape[1])]
        for name, column in zip(names, kept.T, strict=True):
            metrics[f"reward_{name}_mean"] = column.mean().item() if n else float("nan")
    return metrics
