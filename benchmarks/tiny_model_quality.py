"""How well the tiny model draws its world: the judge's accuracy on its samples, against the world's own
images and the random model's samples, as a markdown table.

    python benchmarks/tiny_model_quality.py                      # the shipped model, CFG 5, 20 DDIM steps
    python benchmarks/tiny_model_quality.py --folder /tmp/ckpt   # a pretraining run's folder
    python benchmarks/tiny_model_quality.py --grid docs/tiny_model_samples.png   # and a picture

Every held-out caption (`shapes-eval`, 224) is sampled from its own fixed noise with eta 0; the judge
(rlft/rewards/world_judge.py) reads back each sample's colour, shape, size and background, and the table
gives the fraction that match the caption, the colour-alignment reward's mean and the JPEG sizes' spread.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from rlft.diffusion.models import build_tiny_pipeline, load_tiny_pretrained
from rlft.diffusion.sampling import sample_trajectories
from rlft.diffusion.world import parse_caption, render
from rlft.evaluation import before_after_grid, save_grid
from rlft.prompts import PROMPT_SETS
from rlft.rewards.registry import jpeg_size_kb
from rlft.rewards.world_judge import accuracy, color_alignment

COLUMNS = ("colour", "shape", "size", "background", "background_colour", "all")


def sample(pipe, prompts: list[str], guidance: float, steps: int, batch: int = 32) -> torch.Tensor:
    images = []
    for start in range(0, len(prompts), batch):
        generator = torch.Generator().manual_seed(start)
        out = sample_trajectories(
            pipe,
            prompts[start : start + batch],
            num_steps=steps,
            guidance_scale=guidance,
            eta=0.0,
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder", default=None, help="pretrained weights folder (default: the package's)")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=20)
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
    prompts = list(PROMPT_SETS["shapes-eval"])
    rng = np.random.default_rng(0)
    real = torch.stack([torch.from_numpy(render(parse_caption(p), rng)) for p in prompts])
    print("| images | " + " | ".join(COLUMNS) + " | colour alignment | JPEG size spread (kB) |")
    print("|" + " --- |" * (len(COLUMNS) + 3))
    print(row("the world's own (held-out captions)", real, prompts))
    start = time.perf_counter()
    pretrained = load_tiny_pretrained(args.folder)
    loaded = time.perf_counter() - start
    for name, pipe in (("tiny-random", build_tiny_pipeline(0)), ("tiny (pretrained)", pretrained)):
        images = sample(pipe, prompts, args.guidance, args.steps)
        print(row(f"{name}, CFG {args.guidance:g}", images, prompts))
    if args.grid:
        path = save_grid(before_after_grid(real[:16], images[:16]), Path(args.grid))
        print(f"\nwrote {path}: the world's images of {prompts[0]!r} and the next 15 held-out captions,")
        print("each row of them followed by the pretrained model's samples of the same captions")
    print(f"\nthe pretrained model loaded in {loaded:.2f} s; chance: colour 1/8, shape 1/4, background 1/4")


if __name__ == "__main__":
    main()
