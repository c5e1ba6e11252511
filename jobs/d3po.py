"""D3PO: fine-tune a diffusion model from preferences between samples that share their initial noise.

Single-process for now (the Ray pipeline comes next). With no flags it trains the offline tiny model on JPEG
compressibility, prints one line per epoch, and saves the adapter in diffusers' LoRA format.
"""

import sys

import tyro

from rlft.config import D3POConfig
from rlft.loop import train_d3po


def main() -> None:
    try:
        cfg = tyro.cli(D3POConfig, description=__doc__)
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(
        f"D3PO | model {cfg.model} | reward {cfg.reward} | {cfg.epochs} epochs x {cfg.pairs_per_epoch} pairs"
    )
    history = train_d3po(cfg)
    first, last = history[0]["reward_mean"], history[-1]["reward_mean"]
    print(f"reward {first:.4f} -> {last:.4f} | adapter saved in {cfg.output_dir}")


if __name__ == "__main__":
    main()
