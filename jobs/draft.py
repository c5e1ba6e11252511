"""DRaFT: fine-tune a diffusion model by backpropagating a differentiable reward through sampling.

`--variant draft-k --k K` (gradient through the last K steps), `--variant draft-lv --lv-copies n`, or
`--variant full`. Single-process for now (the Ray pipeline comes next). With no flags it runs DRaFT-K with
K = 1 on the offline tiny model and the differentiable smoothness reward, and saves the adapter.
"""

import sys

import tyro

from rlft.config import DRaFTConfig
from rlft.loop import train_draft


def main() -> None:
    try:
        cfg = tyro.cli(DRaFTConfig, description=__doc__)
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(f"DRaFT ({cfg.variant}, K={cfg.steps_with_grad}) | model {cfg.model} | reward {cfg.reward}")
    history = train_draft(cfg)
    first, last = history[0]["reward_mean"], history[-1]["reward_mean"]
    print(f"reward {first:.4f} -> {last:.4f} | adapter saved in {cfg.output_dir}")


if __name__ == "__main__":
    main()
