"""The fixed evaluation set: the same held-out prompts and the same noise at every evaluation of every run.

An epoch's training-sample reward mostly reflects which prompts were drawn; learning shows on a fixed set.
The set is `cfg.eval_images` samples, one per prompt of `cfg.eval_prompts` taken in order (cycling), each with
noise from a seed that depends on neither the run's seed nor the epoch, so two runs (a seed and its reversed
control, or two seeds) are scored on the very same prompts and noise, paired image by image. The base
model is evaluated once before training; every evaluation after it reports its mean and standard error and
the paired gain over the base (the mean and standard error of the per-image differences).
"""

import math
from pathlib import Path

import torch
from torch import Tensor

from rlft.configs import SamplingConfig
from rlft.epoch import Chunk, stream_seed
from rlft.prompts import load_prompts

EVAL_SEED = 20231122  # D3PO's arXiv date: any fixed number, the same for every run


def eval_prompts(cfg: SamplingConfig) -> list[str]:
    prompts = load_prompts(cfg.eval_prompts)
    return [prompts[i % len(prompts)] for i in range(cfg.eval_images)]


def eval_chunks(cfg: SamplingConfig) -> list[Chunk]:
    """The evaluation set cut into sampler chunks, each with its fixed noise seed."""
    prompts, size = eval_prompts(cfg), cfg.sample_batch
    return [
        Chunk(start, prompts[start : start + size], stream_seed(EVAL_SEED, 0, "eval", start))
        for start in range(0, len(prompts), size)
    ]


def eval_settings(cfg: SamplingConfig) -> dict:
    """Sampling as the policy samples in training (steps, guidance, eta), one image per prompt, every step."""
    return cfg.common_sampling() | dict(
        group_size=1, with_logprob=False, skip_last=0, last_only=True, keep_log_probs=False
    )


def _mean_se(values: Tensor) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    std = values.std().item() if n > 1 else 0.0
    return values.mean().item(), std / math.sqrt(n)


def eval_metrics(rewards: Tensor, base: Tensor, names: list[str] | None = None) -> dict[str, float]:
    """rewards and base: (N,) or (N, R), the same images' rewards now and before training.

    eval_reward_mean/_se are the first reward's; eval_gain_mean/_se the paired differences to the base;
    with several rewards each also gets eval_<name>_mean and eval_<name>_gain_mean. Images whose reward is
    not finite (now or at the base) are left out.
    """
    rewards = rewards[:, None] if rewards.ndim == 1 else rewards  # (N, R)
    base = base[:, None] if base.ndim == 1 else base
    kept = torch.isfinite(rewards).all(dim=1) & torch.isfinite(base).all(dim=1)
    rewards, base = rewards[kept].double(), base[kept].double()
    metrics = {}
    for r in range(rewards.shape[1]):
        mean, se = _mean_se(rewards[:, r])
        gain, gain_se = _mean_se(rewards[:, r] - base[:, r])
        base_mean, _ = _mean_se(base[:, r])
        prefix = "eval_reward" if r == 0 else f"eval_{(names or [])[r] if names else r}"
        metrics |= {f"{prefix}_mean": mean, f"{prefix}_se": se, f"{prefix}_base_mean": base_mean}
        gain_prefix = "eval_gain" if r == 0 else f"{prefix}_gain"
        metrics |= {f"{gain_prefix}_mean": gain, f"{gain_prefix}_se": gain_se}
    return metrics


def judged_metrics(images: Tensor, prompts: list[str]) -> dict[str, float]:
    """On the tiny model's world: the share of evaluation images whose shape colour and whose shape the world
    judge reads as their captions say (eval_colour_accuracy, eval_shape_accuracy); {} for other prompts."""
    from rlft.world.judge import accuracy
    from rlft.world.scenes import parse_caption

    if not prompts or any(parse_caption(prompt) is None for prompt in prompts):
        return {}
    scores = accuracy(images.float().clamp(0, 1).cpu(), prompts)
    return {"eval_colour_accuracy": scores["colour"], "eval_shape_accuracy": scores["shape"]}


def format_eval(m: dict[str, float]) -> str:
    """'eval 0.412 +- 0.011 (gain +0.034 +- 0.006)' for the epoch line."""
    line = (
        f"eval {m['eval_reward_mean']:.4f} +- {m['eval_reward_se']:.4f} "
        f"(gain {m['eval_gain_mean']:+.4f} +- {m['eval_gain_se']:.4f})"
    )
    if "eval_colour_accuracy" in m:
        line += f" judged colour {m['eval_colour_accuracy']:.0%} shape {m['eval_shape_accuracy']:.0%}"
    return line


def before_after_grid(before: Tensor, after: Tensor, columns: int = 8) -> Tensor:
    """Rows of `columns` images: the base model's, then the trained policy's of the same prompts and
    noise, in pairs of rows; (3, H', W') in [0, 1]."""
    from torchvision.utils import make_grid

    count = min(len(before), len(after))
    rows = []
    for start in range(0, count, columns):
        rows += [before[start : start + columns], after[start : start + columns]]
    rows = [torch.nn.functional.pad(r, (0, 0, 0, 0, 0, 0, 0, columns - len(r))) for r in rows]
    return make_grid(torch.cat(rows).float().cpu(), nrow=columns, padding=1, pad_value=1.0)


def save_grid(grid: Tensor, path: Path, scale: int = 4) -> Path:
    """The grid as a PNG, each pixel drawn `scale` times larger (32x32 samples are small to look at)."""
    from torchvision.utils import save_image

    big = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(big, str(path))
    return path
