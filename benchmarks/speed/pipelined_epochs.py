"""Benchmark: pipelined epochs against sequential ones on Ray, one sampler and one train worker with one
thread each (each on its own CPU), in one run.

Sequential, an epoch samples, then trains; pipelined (`--pipeline on`), the sampler draws the next epoch
while the worker trains this one. Prints each mode's mean epoch time (epoch 0 left out: it pays warm-up and
has nothing to overlap), where it goes (the sampling the epoch still waited for, training, the rest), and the
ratio pipelined / sequential (issue target: at most 0.7). The runs alternate (sequential, pipelined,
pipelined, sequential, ... for --repeats) so that the machine's drift falls on both. The evaluation runs only
at the end: evaluated every epoch, it would queue behind the next epoch's sampling. Needs no GPU or MLflow.

    python benchmarks/speed/pipelined_epochs.py [--epochs 5] [--pairs 16] [--repeats 2] [--json PATH]
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import ray

from rlft.configs import D3POConfig
from rlft.distributed.cluster import start_ray
from rlft.distributed.ray_loop import ray_train


def steady(history: list[dict], key: str) -> float:
    """The mean of `key` over the epochs after the first."""
    return statistics.mean(h.get(key, 0.0) for h in history[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    common = dict(epochs=args.epochs, pairs_per_epoch=args.pairs, threads=1, track=False)
    common |= dict(eval_every=args.epochs, image_every=args.epochs)
    configs = {mode: D3POConfig(pipeline=mode, **common) for mode in ("off", "on")}
    order = [("off", "on") if r % 2 == 0 else ("on", "off") for r in range(args.repeats)]
    epochs: dict[str, list[float]] = {"off": [], "on": []}
    waited: dict[str, list[float]] = {"off": [], "on": []}
    trained: dict[str, list[float]] = {"off": [], "on": []}
    start_ray(configs["off"], log=lambda line: None)
    with tempfile.TemporaryDirectory() as folder:
        for r, modes in enumerate(order):
            for mode in modes:
                history = ray_train(configs[mode], Path(folder) / f"{mode}-{r}", log=lambda line: None)
                epochs[mode].append(steady(history, "epoch_time_s"))
                waited[mode].append(steady(history, "time_sample_s") + steady(history, "time_score_s"))
                trained[mode].append(steady(history, "time_train_s"))
                print(f"run {r} {mode:3s}: epoch {epochs[mode][-1]:.2f} s", flush=True)
    ray.shutdown()
    print(
        f"D3PO, tiny model, {args.pairs} groups of 4 x {configs['off'].num_steps} steps per epoch, ", end=""
    )
    print(f"{args.epochs} epochs, {args.repeats} runs of each, one thread per actor")
    for mode, name in (("off", "sequential"), ("on", "pipelined")):
        print(
            f"{name:10s} epoch {statistics.mean(epochs[mode]):6.2f} s | waited for samples "
            f"{statistics.mean(waited[mode]):5.2f} s | train {statistics.mean(trained[mode]):5.2f} s"
        )
    ratios = [on / off for on, off in zip(epochs["on"], epochs["off"], strict=True)]
    listed = ", ".join(f"{r:.3f}" for r in ratios)
    print(
        f"ratio      {statistics.mean(ratios):6.3f} (pipelined / sequential epoch time, per pair: {listed}; ",
        end="",
    )
    print("target <= 0.7)")
    if args.json:
        figures = dict(pipelined_over_sequential=statistics.mean(ratios))
        figures |= {f"{mode}_epoch_s": statistics.mean(epochs[mode]) for mode in ("off", "on")}
        with open(args.json, "w") as f:
            json.dump(figures, f)


if __name__ == "__main__":
    main()
