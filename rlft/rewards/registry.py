"""Rewards: `fn(images, prompts=None)`, images (B, 3, H, W) in [0, 1], prompts a list of B strings -> (B,).

Names (`--reward`):
- Weight-free: the JPEG rewards are the compressibility tasks of DDPO (arXiv 2305.13301) and D3PO, the size of
  the image saved as JPEG at quality 95 in kB (not differentiable); `smoothness` is a differentiable stand-in
  for compressibility (JPEG size grows with high-frequency content, which total variation measures), and
  `brightness` the simplest differentiable reward there is. The JPEG rewards return float32; the
  differentiable ones keep the images' dtype (float64 for gradient checks). They ignore the prompts.
- Model-based: `aesthetic` (the LAION aesthetic predictor, rlft/rewards/aesthetic.py), `imagereward`
  (rlft/rewards/imagereward.py) and `pickscore` (rlft/rewards/pickscore.py; both need the prompts), from the
  hub, or `aesthetic:<folder>`, `imagereward:<folder>`, `pickscore:<folder>` from a local folder. All three
  are differentiable. Their weights load on the first call,
  once per process, and move to the images' device; `get_reward` only checks the folder, so a config that
  names one is validated in well under a second.
- World (the tiny model's captions, rlft/world/scenes.py; both need the prompts and refuse any other with a
  ValueError): `color-alignment`, how much the shape has the colour its prompt names, in [0, 1] (float32,
  not differentiable), and `color-alignment-soft`, the same with soft colours (differentiable, keeps the
  images' dtype); rlft/world/judge.py says how they are computed.
- Several: `a,b` scores with each and returns (B, R), R the number of rewards, in the order named. D3PO
  prefers a sample only when it is at least as good on every reward and better on one
  (`rlft.algorithms.pairs.pairs_from_rewards`); DRaFT refuses several rewards (see `get_reward`).
"""

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from rlft.rewards.aesthetic import AestheticScore
from rlft.rewards.aesthetic import check_folder as check_aesthetic_folder
from rlft.rewards.imagereward import ImageRewardScore
from rlft.rewards.imagereward import check_folder as check_imagereward_folder
from rlft.rewards.pickscore import PickScore
from rlft.rewards.pickscore import check_folder as check_pickscore_folder
from rlft.world.judge import color_alignment, color_alignment_soft

# fn(images (B, 3, H, W), prompts: list[str] | None = None) -> (B,), or (B, R) for several rewards
RewardFn = Callable[..., Tensor]


def jpeg_size_kb(images: Tensor, quality: int = 95) -> Tensor:
    """Size of each image as a JPEG at `quality`, in kB (1000 bytes): (B,)."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    sizes = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


def jpeg_compressibility(images: Tensor, prompts: list[str] | None = None) -> Tensor:
    return -jpeg_size_kb(images)


def jpeg_incompressibility(images: Tensor, prompts: list[str] | None = None) -> Tensor:
    return jpeg_size_kb(images)


def smoothness(images: Tensor, prompts: list[str] | None = None) -> Tensor:
    """Minus the mean absolute difference between neighbouring pixels (total variation), times 10."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return -10 * (dx + dy)


def brightness(images: Tensor, prompts: list[str] | None = None) -> Tensor:
    """Mean pixel value, in [0, 1]."""
    return images.mean(dim=(1, 2, 3))


@dataclass(frozen=True)
class Reward:
    fn: RewardFn
    differentiable: bool
    description: str
    needs_prompts: bool = False
    """True when `fn` scores an image against its prompt: callers must pass `prompts`."""


REWARDS: dict[str, Reward] = {
    "jpeg-compressibility": Reward(jpeg_compressibility, False, "minus the JPEG size in kB"),
    "jpeg-incompressibility": Reward(jpeg_incompressibility, False, "the JPEG size in kB"),
    "smoothness": Reward(smoothness, True, "minus 10x the total variation (differentiable)"),
    "brightness": Reward(brightness, True, "mean pixel value (differentiable)"),
    "color-alignment": Reward(
        color_alignment, False, "share of the shape in the prompt's colour, 0-1", needs_prompts=True
    ),
    "color-alignment-soft": Reward(
        color_alignment_soft,
        True,
        "share of the shape in the prompt's colour, 0-1 (soft colours, differentiable)",
        needs_prompts=True,
    ),
}
# Model-based rewards: name -> (folder check, score class, description, needs prompts).
MODEL_REWARDS = {
    "aesthetic": (check_aesthetic_folder, AestheticScore, "LAION aesthetic predictor, 1-10", False),
    "imagereward": (check_imagereward_folder, ImageRewardScore, "ImageReward of image and prompt", True),
    "pickscore": (check_pickscore_folder, PickScore, "PickScore of image and prompt (CLIP-H)", True),
}
KNOWN = f"{', '.join(REWARDS)}, {', '.join(f'{n}[:<folder>]' for n in MODEL_REWARDS)}"


class Several:
    """Scores with every reward: fn(images, prompts=None) -> (B, R)."""

    def __init__(self, fns: list[RewardFn]):
        self.fns = fns

    def __call__(self, images: Tensor, prompts: list[str] | None = None) -> Tensor:
        return torch.stack([fn(images, prompts).float() for fn in self.fns], dim=1)


def reward_names(name: str) -> list[str]:
    """Short names of the rewards in `name` (a folder dropped), for metrics: 'aesthetic:/w,brightness' ->
    ['aesthetic', 'brightness']."""
    return [part.partition(":")[0] for part in name.split(",")]


def _one_reward(name: str) -> Reward:
    kind, colon, folder = name.partition(":")
    if kind in MODEL_REWARDS:
        check, score, description, needs_prompts = MODEL_REWARDS[kind]
        if colon:
            check(folder)
        return Reward(score(folder if colon else None), True, description, needs_prompts)
    if name not in REWARDS:
        raise ValueError(f"reward {name!r} is unknown; choose one of {KNOWN}, or several joined by commas")
    return REWARDS[name]


def get_reward(name: str, *, differentiable: bool = False) -> Reward:
    """The reward called `name`; `differentiable=True` refuses rewards that give no gradient.

    Several comma-joined names give one Reward whose fn returns (B, R). DRaFT (`differentiable=True`) refuses
    them: it needs one number per image to ascend, and a sum would weigh rewards by their units (kB of JPEG
    against a 1-10 aesthetic rating); combine them into one reward of your own instead.
    """
    parts = name.split(",")
    if len(parts) > 1:
        if differentiable:
            raise ValueError(f"reward {name!r} names several rewards; DRaFT takes one differentiable reward")
        names = reward_names(name)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"reward {name!r} names {', '.join(twice)} more than once")
        rewards = [_one_reward(part) for part in parts]
        description = " | ".join(r.description for r in rewards)
        needs_prompts = any(r.needs_prompts for r in rewards)
        return Reward(Several([r.fn for r in rewards]), False, description, needs_prompts)
    reward = _one_reward(name)
    if differentiable and not reward.differentiable:
        allowed = ", ".join(n for n, r in REWARDS.items() if r.differentiable)
        raise ValueError(
            f"reward {name!r} is not differentiable, which DRaFT needs; choose one of {allowed}, "
            f"{', '.join(MODEL_REWARDS)}"
        )
    return reward
