"""Rewards that need no weights. Each takes images (B, 3, H, W) in [0, 1] and returns (B,).

The JPEG rewards are the compressibility tasks of DDPO (arXiv 2305.13301) and D3PO: the size of the image
saved as JPEG at quality 95, in kB. They are not differentiable. `smoothness` is a differentiable stand-in
for compressibility (JPEG size grows with high-frequency content, which total variation measures), and
`brightness` the simplest differentiable reward there is; DRaFT uses these on the tiny model. The JPEG
rewards return float32; the differentiable ones keep the images' dtype (float64 for gradient checks).
"""

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor


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


def jpeg_compressibility(images: Tensor) -> Tensor:
    return -jpeg_size_kb(images)


def jpeg_incompressibility(images: Tensor) -> Tensor:
    return jpeg_size_kb(images)


def smoothness(images: Tensor) -> Tensor:
    """Minus the mean absolute difference between neighbouring pixels (total variation), times 10."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return -10 * (dx + dy)


def brightness(images: Tensor) -> Tensor:
    """Mean pixel value, in [0, 1]."""
    return images.mean(dim=(1, 2, 3))


@dataclass(frozen=True)
class Reward:
    fn: Callable[[Tensor], Tensor]
    differentiable: bool
    description: str


REWARDS: dict[str, Reward] = {
    "jpeg-compressibility": Reward(jpeg_compressibility, False, "minus the JPEG size in kB"),
    "jpeg-incompressibility": Reward(jpeg_incompressibility, False, "the JPEG size in kB"),
    "smoothness": Reward(smoothness, True, "minus 10x the total variation (differentiable)"),
    "brightness": Reward(brightness, True, "mean pixel value (differentiable)"),
}


def get_reward(name: str, *, differentiable: bool = False) -> Reward:
    """The reward called `name`; `differentiable=True` refuses rewards that give no gradient."""
    if name not in REWARDS:
        raise ValueError(f"reward {name!r} is unknown; choose one of {', '.join(REWARDS)}")
    reward = REWARDS[name]
    if differentiable and not reward.differentiable:
        allowed = ", ".join(n for n, r in REWARDS.items() if r.differentiable)
        raise ValueError(f"reward {name!r} is not differentiable, which DRaFT needs; choose one of {allowed}")
    return reward
