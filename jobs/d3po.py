"""D3PO: fine-tune a diffusion model from preferences between samples that share their initial noise.

Single-process for now (the Ray pipeline comes next). With no flags it trains the offline tiny model on JPEG
compressibility and prints one line per epoch. Each run checkpoints every epoch under runs/<run-name> and
logs to MLflow; the same --run-name again resumes it. The adapter ends in runs/<run-name>/adapter, in
diffusers' LoRA format.
"""

import sys
from contextlib import nullcontext

import tyro

from rlft.config import D3POConfig
from rlft.loop import train_d3po
from rlft.tracking import open_run, tracking_uri


def main() -> None:
    try:
        cfg = tyro.cli(D3POConfig, description=__doc__)
        run_dir, tracker = open_run(cfg, "d3po")
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(
        f"D3PO | model {cfg.model} | reward {cfg.reward} | {cfg.epochs} epochs x {cfg.pairs_per_epoch} pairs"
    )
    with tracker or nullcontext():
        history = train_d3po(cfg, run_dir, tracker)
    first, last = history[0]["reward_mean"], history[-1]["reward_mean"]
    print(f"reward {first:.4f} -> {last:.4f} | adapter in {run_dir}/adapter")
    if tracker:
        print(f"MLflow run {tracker.run_id} in {tracking_uri()}")


if __name__ == "__main__":
    main()
