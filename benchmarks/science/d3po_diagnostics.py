"""What a D3PO run does, epoch by epoch, forward beside its reversed twin: the signal its pairs carry, how
far the policy moves from the reference, whether each step moves its own pairs the way they ask, and what
the world judge reads on the fixed evaluation set. One markdown table per run (one process each, as the job
runs with --no-ray).

    python benchmarks/science/d3po_diagnostics.py --seed 0 --variant "reward='color-alignment-soft'"

Columns: the evaluation gain over the base model (+- its standard error); the judged shares of evaluation
images whose shape colour and shape match their captions; the trained pairs' mean reward gap and the share
of them that are near-ties (won by less than a quarter of the epoch's reward standard deviation); the mean
per-step log-ratios to the reference of the preferred (w) and rejected (l) steps; the implicit reward
margin and the preference accuracy before and after each optimizer step, on that step's own items; the
share of clamped ratios; the KL estimate mean(log r^2 / 2).
"""

import argparse
import tempfile
from pathlib import Path

import torch
from learning import parse_variant  # benchmarks/science/learning.py, beside this script

from rlft.configs import D3POConfig
from rlft.local import train_local

NAN = float("nan")
COLUMNS = (
    ("epoch", "{:.0f}"),
    ("eval gain", None),
    ("colour / shape judged", None),
    ("reward gap", "{:.3f}"),
    ("near-ties", "{:.0%}"),
    ("log r w / l", None),
    ("margin before -> after step", None),
    ("accuracy before -> after", None),
    ("clamped", "{:.0%}"),
    ("KL", "{:.2f}"),
)


def row(epoch: int, m: dict[str, float]) -> str:
    cells = [
        f"{epoch}",
        f"{m['eval_gain_mean']:+.3f} +- {m['eval_gain_se']:.3f}",
        f"{m.get('eval_colour_accuracy', NAN):.0%} / {m.get('eval_shape_accuracy', NAN):.0%}",
        f"{m['reward_gap']:.3f}",
        f"{m['near_tie_share']:.0%}",
        f"{m['log_ratio_w']:+.2f} / {m['log_ratio_l']:+.2f}",
        f"{m['margin_before']:+.1e} -> {m['margin_after']:+.1e}",
        f"{m['accuracy_before']:.2f} -> {m['accuracy_after']:.2f}",
        f"{m['clamped_fraction']:.0%}",
        f"{m['kl']:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="", help="config fields, as learning.py takes them")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("forward", "reversed"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fields = parse_variant(args.variant)
    directions = [args.only == "reversed"] if args.only else [False, True]
    for reverse in directions:
        cfg = D3POConfig(
            **fields,
            seed=args.seed,
            ray=False,
            track=False,
            reverse_preferences=reverse,
            eval_every=1,
            margin_after_every_step=True,
        )
        with tempfile.TemporaryDirectory() as tmp:
            history = train_local(cfg, Path(tmp) / "run", log=lambda line: None)
        name = "reversed twin" if reverse else "forward"
        base = history[0]
        print(
            f"\n{name}, seed {args.seed}, {args.variant or 'defaults'} (base: eval reward "
            f"{base['eval_reward_base_mean']:.3f}, judged colour "
            f"{base.get('eval_colour_accuracy_base', float('nan')):.0%} shape "
            f"{base.get('eval_shape_accuracy_base', float('nan')):.0%})\n"
        )
        print("| " + " | ".join(name for name, _ in COLUMNS) + " |")
        print("|" + " --- |" * len(COLUMNS))
        for epoch, metrics in enumerate(history):
            print(row(epoch, metrics), flush=True)


if __name__ == "__main__":
    main()
