"""Does a setting learn? Each variant trained forward and reversed (--reverse-preferences) over seeds, in one
process, judged on the fixed evaluation set; one markdown row per variant and seed, then a mean per variant.

    python benchmarks/science/learning.py --algorithm d3po --seeds 0 1 2 --variant "" --variant "lr=2e-3"

A variant is space-separated config fields (`field=value`, values parsed as Python literals, else strings);
"" is the default config. The row gives the forward run's paired gain over the base model (mean +- standard
error of the per-image differences), the reversed run's, their difference in standard errors (taken as
independent, which overstates the error), and the forward run's wall time.
"""

import argparse
import ast
import math
import tempfile
import time
from pathlib import Path

import torch

from rlft.configs import D3POConfig, DDPOConfig, DRaFTConfig
from rlft.local import train_local

ALGORITHMS = {"d3po": D3POConfig, "draft": DRaFTConfig, "ddpo": DDPOConfig}


def parse_variant(text: str) -> dict:
    fields = {}
    for part in text.split():
        name, _, value = part.partition("=")
        try:
            fields[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            fields[name] = value
    return fields


def run(config_type, fields: dict, seed: int, reverse: bool, folder: Path) -> tuple[dict, float]:
    cfg = config_type(**fields, seed=seed, ray=False, track=False, reverse_preferences=reverse)
    start = time.perf_counter()
    history = train_local(cfg, folder, log=lambda line: None)
    return history[-1], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="d3po")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config_type = ALGORITHMS[args.algorithm]
    print("| variant | seed | gain | reversed gain | difference / SE | time (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for variant in args.variant or [""]:
        fields = parse_variant(variant)
        config_type(**fields)  # a bad field fails before anything runs
        gains = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                forward, seconds = run(config_type, fields, seed, False, Path(tmp) / "f")
                reverse, _ = run(config_type, fields, seed, True, Path(tmp) / "r")
            g, se = forward["eval_gain_mean"], forward["eval_gain_se"]
            rg, rse = reverse["eval_gain_mean"], reverse["eval_gain_se"]
            gains.append(g)
            z = (g - rg) / math.hypot(se, rse)
            print(
                f"| {variant or 'default'} | {seed} | {g:+.4f} +- {se:.4f} ({g / se:+.1f} SE) | "
                f"{rg:+.4f} +- {rse:.4f} | {z:+.1f} | {seconds:.0f} |",
                flush=True,
            )
        mean = sum(gains) / len(gains)
        spread = (sum((g - mean) ** 2 for g in gains) / max(len(gains) - 1, 1)) ** 0.5
        se = spread / len(gains) ** 0.5
        print(f"| {variant or 'default'} | mean of {len(gains)} seeds | {mean:+.4f} +- {se:.4f} | | | |")


if __name__ == "__main__":
    main()
