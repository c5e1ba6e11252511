"""Pretrain the tiny model on rlft/diffusion/world.py's captioned shapes and write it where `--model tiny`
loads it.

The VAE first, then the UNet with the text encoder; one progress line every --log-every steps. The shipped
weights (rlft/diffusion/tiny_model; model.json records the settings, losses and times) are this command's
defaults with `--threads 2` on a 2-core machine: 64 minutes (VAE 12, UNet 51; another job shared the cores
for the first 13). Deterministic on a CPU for a given seed and thread count. `--device cuda` trains on a GPU
(not timed here).
"""

from dataclasses import dataclass
from typing import Literal

import torch
import tyro

from rlft.diffusion.pretrain import PretrainSettings, pretrain


@dataclass(frozen=True)
class Args:
    settings: PretrainSettings
    out: str = "rlft/diffusion/tiny_model"
    """Folder to write unet/vae/text_encoder .safetensors and model.json to."""
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int | None = None
    """CPU threads for torch; default: torch's own choice."""


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: device='cuda' but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    pretrain(args.settings, args.out, args.device, log=lambda line: print(line, flush=True))
