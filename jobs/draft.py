"""DRaFT: fine-tune a diffusion model by backpropagating a differentiable reward through sampling.

`--variant draft-k --k K` (gradient through the last K steps), `--variant draft-lv --lv-copies n`, or
`--variant full`. Single-process for now (the Ray pipeline comes next). With no flags it runs DRaFT-K with
K = 1 on the offline tiny model and the differentiable smoothness reward. Each run checkpoints every epoch
under runs/<run-name> and logs to MLflow; the same --run-name again resumes it.
"""

import sys
from contextlib import nullcontext

import tyro

from rlft.config import DRaFTConfig
from rlft.loop import train_draft
from rlft.tracking import open_run, tracking_uri


def main() -> None:
    try:
        cfg = tyro.cli(DRaFTConfig, description=__doc__)
        run_dir, tracker = open_run(cfg, "draft")
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(f"DRaFT ({cfg.variant}, K={cfg.steps_with_grad}) | model {cfg.model} | reward {cfg.reward}")
    with tracker or nullcontext():
        history = train_draft(cfg, run_dir, tracker)
    first, last = history[0]["reward_mean"], history[-1]["reward_mean"]
    print(f"reward {first:.4f} -> {last:.4f} | adapter in {run_dir}/adapter")
    if tracker:
        print(f"MLflow run {tracker.run_id} in {tracking_uri()}")


if __name__ == "__main__":
    main()
