"""How well the tiny model draws its world: the judge's accuracy on its samples, against the world's own
images and the random model's samples, as a markdown table.

    python benchmarks/science/tiny_model_quality.py                     # the shipped model, CFG 5, 20 steps
    python benchmarks/science/tiny_model_quality.py --folder /tmp/ckpt  # a pretraining run's folder
    python benchmarks/science/tiny_model_quality.py --grid docs/tiny_model_samples.png  # and a picture
    python benchmarks/science/tiny_model_quality.py --steps 10 --eta 1 --group-size 4  # as D3PO samples

Every held-out caption (`shapes-eval`, 224; `--prompts` another set) is sampled from its own fixed noise
with eta 0 (`--eta`); the judge (rlft/world/judge.py) reads back each sample's colour, shape, size
and background, and the table gives the fraction that match the caption, the colour-alignment reward's mean
and the JPEG sizes' spread. `--group-size N` samples each caption N times from one shared noise, as D3PO's
groups are, and adds what a preference can learn from there: the share of groups whose members disagree on
the colour, and the soft colour reward's spread within groups against the spread of the groups' means.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from rlft.diffusion.sampling import sample_trajectories
from rlft.evaluation import before_after_grid, save_grid
from rlft.prompts import PROMPT_SETS
from rlft.rewards.registry import jpeg_size_kb
from rlft.world.judge import accuracy, color_alignment, color_alignment_soft, judge
from rlft.world.scenes import parse_caption, render
from rlft.world.tiny_model import build_tiny_pipeline, load_tiny_pretrained

COLUMNS = ("colour", "shape", "size", "background", "background_colour", "all")


def sample(
    pipe, prompts: list[str], guidance: float, steps: int, eta: float = 0.0, group_size: int = 1
) -> torch.Tensor:
    """Each prompt's `group_size` samples (members of a group share x_T, adjacent), 32 prompts a call."""
    images = []
    for start in range(0, len(prompts), 32):
        generator = torch.Generator().manual_seed(start)
        out = sample_trajectories(
            pipe,
            prompts[start : start + 32],
            num_steps=steps,
            guidance_scale=guidance,
            eta=eta,
            group_size=group_size,
            generator=generator,
            with_logprob=False,
        )
        images.append(out["images"])
    return torch.cat(images)


def row(name: str, images: torch.Tensor, prompts: list[str]) -> str:
    scores = accuracy(images, prompts)
    sizes = jpeg_size_kb(images)
    cells = [f"{scores[c]:.0%}" for c in COLUMNS]
    cells += [f"{color_alignment(images, prompts).mean():.3f}", f"{sizes.std():.3f}"]
    return f"| {name} | " + " | ".join(cells) + " |"


def group_spread(images: torch.Tensor, prompts: list[str], group_size: int) -> str:
    """What D3PO's groups hold: the share whose members disagree on the judged colour, and the soft colour
    reward's mean standard deviation within a group against the standard deviation of the groups' means."""
    captions = [p for p in prompts for _ in range(group_size)]
    judged = zip(judge(images), captions, strict=True)
    right = torch.tensor([j.colour == parse_caption(c).colour for j, c in judged])
    right = right.view(-1, group_size).float().mean(dim=1)
    mixed = ((right > 0) & (right < 1)).float().mean().item()
    reward = color_alignment_soft(images, captions).view(-1, group_size)
    return (
        f"groups of {group_size} sharing x_T: {mixed:.0%} disagree on the colour; soft colour reward spread "
        f"{reward.std(dim=1).mean():.3f} within a group, {reward.mean(dim=1).std():.3f} between groups"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder", default=None, help="pretrained weights folder (default: the package's)")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (D3PO trains at 1)")
    parser.add_argument("--prompts", default="shapes-eval", help="a built-in prompt set (default: held out)")
    parser.add_argument("--group-size", type=int, default=1, help="samples per caption from one noise")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--grid",
        default=None,
        help="also write a PNG: the first 16 captions' world images, each row followed by the pretrained "
        "model's samples of the same captions",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = list(PROMPT_SETS[args.prompts])
    rng = np.random.default_rng(0)
    real = torch.stack([torch.from_numpy(render(parse_caption(p), rng)) for p in prompts])
    print("| images | " + " | ".join(COLUMNS) + " | colour alignment | JPEG size spread (kB) |")
    print("|" + " --- |" * (len(COLUMNS) + 3))
    print(row("the world's own (held-out captions)", real, prompts))
    start = time.perf_counter()
    pretrained = load_tiny_pretrained(args.folder)
    loaded = time.perf_counter() - start
    captions = [p for p in prompts for _ in range(args.group_size)]
    for name, pipe in (("tiny-random", build_tiny_pipeline(0)), ("tiny (pretrained)", pretrained)):
        images = sample(pipe, prompts, args.guidance, args.steps, args.eta, args.group_size)
        print(row(f"{name}, CFG {args.guidance:g}", images, captions))
    setting = f"{args.steps} steps, eta {args.eta:g}, CFG {args.guidance:g}"
    print(f"\nsampled at {setting}, {len(prompts)} '{args.prompts}' captions")
    if args.group_size > 1:
        print(f"the pretrained model's {group_spread(images, prompts, args.group_size)}")
    if args.grid:
        path = save_grid(before_after_grid(real[:16], images[:: args.group_size][:16]), Path(args.grid))
        print(f"\nwrote {path}: the world's images of {prompts[0]!r} and the next 15 held-out captions,")
        print("each row of them followed by the pretrained model's samples of the same captions")
    print(f"\nthe pretrained model loaded in {loaded:.2f} s; chance: colour 1/8, shape 1/4, background 1/4")


if __name__ == "__main__":
    main()
