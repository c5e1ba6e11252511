"""Peak memory and time of a DRaFT-K step (for each K asked) and of a D3PO step, for any model family.

For a GPU check of the large families (`sd35-random` is Stable Diffusion 3.5 Large's shape and `flux-random`
is FLUX.1-dev's, both with random weights; rlft/zoo/full_size.py):

    python benchmarks/speed/family_memory.py --model sd35-random --device cuda --dtype bfloat16

and DRaFT-K's memory and time against K on SD 1.5's shape (each K samples to K steps before the end):

    python benchmarks/speed/family_memory.py --model sd15-random --dtype bfloat16 --num-steps 50 \
        --k 1,5,10,20,50

Each step is rlft's own code: a LoRA `Policy` on the UNet or transformer with gradient checkpointing (on
by default), the `DRaFTLearner` with k=K on latents sampled to K steps before the end, and the
`D3POLearner` on (pair, timestep) items of a sampled pair. The steps are timed after one warm-up (a warm-up
step and each timed one all update the LoRA). Memory is, on CUDA, the peak allocated during the step; on a
CPU, the process's peak resident size so far. The time spent sampling the latents is printed separately.
Runs without Ray or MLflow.
"""

import argparse
import resource
import statistics
import sys
import time

import torch

from rlft.algorithms.d3po import D3POLearner
from rlft.algorithms.draft import DRaFTLearner
from rlft.algorithms.pairs import pair_items
from rlft.diffusion.policy import Policy
from rlft.diffusion.sampling import sample_trajectories
from rlft.families.registry import denoiser_for
from rlft.prompts import PROMPT_SETS
from rlft.rewards.registry import get_reward
from rlft.zoo.loading import load_pipeline

GiB = 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_bytes(device: torch.device) -> int:
    """Peak allocated on CUDA since the last reset; on a CPU the process's peak resident size (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(name: str, step, policy: Policy, device: torch.device, repeats: int) -> dict:
    """One warm-up step, then `repeats` timed ones: the step's name, median seconds per step, peak bytes,
    the last step's loss, and whether the steps changed the policy's weights."""
    before = [p.detach().clone() for p in policy.parameters()]
    metrics = step()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        metrics = step()
        sync(device)
        times.append(time.perf_counter() - start)
    updated = any(not torch.equal(a, p) for a, p in zip(before, policy.parameters(), strict=True))
    seconds, peak = statistics.median(times), peak_bytes(device)
    return dict(step=name, seconds=seconds, peak=peak, loss=metrics["loss"], updated=updated)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-sd3", help="any rlft model name (default: tiny-sd3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--resolution", type=int, default=None, help="image side (default: the model's)")
    parser.add_argument("--num-steps", type=int, default=28, help="denoising steps of the samples")
    parser.add_argument("--batch", type=int, default=1, help="DRaFT samples, and D3PO pairs, per step")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--guidance-scale", type=float, default=4.5)
    parser.add_argument("--reward", default="brightness", help="DRaFT's differentiable reward")
    parser.add_argument("--k", default="1", help="DRaFT's K, or several: 1,5,10 (each at most --num-steps)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    try:
        args.k = [int(k) for k in args.k.split(",")]
    except ValueError:
        parser.error(f"--k {args.k!r}: whole numbers separated by commas, such as 1,5,10")
    if not all(1 <= k <= args.num_steps for k in args.k):
        parser.error(f"--k {args.k}: each K from 1 to --num-steps ({args.num_steps})")
    return args


def run(args: argparse.Namespace) -> list[dict]:
    """Build the model and policy, then measure both steps; one dict per step (also printed as a table)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    pipe = load_pipeline(args.model, device=device, dtype=dtype)
    denoiser = denoiser_for(pipe)
    resolution = args.resolution or denoiser.default_resolution
    torch.manual_seed(0)
    policy = Policy(
        denoiser.model, pipeline_class=type(pipe), part=denoiser.model_part, lora_rank=args.lora_rank
    )
    if not args.no_gradient_checkpointing:
        denoiser.model.enable_gradient_checkpointing()
    weights = sum(
        p.numel() * p.element_size()
        for m in pipe.components.values()
        if isinstance(m, torch.nn.Module)
        for p in m.parameters()
    )
    prompts = list(PROMPT_SETS["animals"][: args.batch])  # a tuple: SD 1.x's encode_prompt takes a list
    cond, uncond = denoiser.encode(prompts)
    sampling = dict(num_steps=args.num_steps, guidance_scale=args.guidance_scale, resolution=resolution)
    print(
        f"{args.model} | {device} {args.dtype} | {resolution} px, {args.num_steps} steps | weights "
        f"{weights / GiB:.2f} GiB | LoRA rank {args.lora_rank}, gradient checkpointing "
        f"{'off' if args.no_gradient_checkpointing else 'on'}"
    )
    rows = []

    # DRaFT-K: sample to K steps before the end without gradient, then the learner's step through K steps.
    generator = torch.Generator(device).manual_seed(0)
    for k in args.k:
        start = time.perf_counter()
        latents = sample_trajectories(
            pipe, prompts, eta=0.0, generator=generator, skip_last=k, with_logprob=False, **sampling
        )["latents"][:, -1]
        sampled = time.perf_counter() - start
        draft = DRaFTLearner(
            denoiser,
            policy,
            get_reward(args.reward, differentiable=True).fn,
            lr=1e-4,
            num_steps=args.num_steps,
            k=k,
            guidance_scale=args.guidance_scale,
        )

        def draft_step(draft=draft, latents=latents):
            return draft.step(latents, cond, uncond, generator, prompts)[0]

        row = measure(f"DRaFT-K={k}", draft_step, policy, device, args.repeats)
        rows.append(row | {"sampled": sampled})

    # D3PO: one pair per prompt (two samples sharing x_T, with log-probabilities); a step on one item of each
    # pair, pair i at step i * S / batch, the first member preferred (speed and memory do not depend on it).
    start = time.perf_counter()
    out = sample_trajectories(pipe, prompts, group_size=2, eta=1.0, generator=generator, **sampling)
    sampled = time.perf_counter() - start
    index_w = torch.arange(0, 2 * args.batch, 2)
    items = pair_items(out["latents"], out["group"], out["timesteps"], index_w, index_w + 1)
    pair = torch.arange(args.batch, device=device)
    pick = pair * args.num_steps + pair * args.num_steps // args.batch  # item n: pair n // S at step n % S
    batch = {k: v[pick] for k, v in items.items()}
    denoiser.set_timesteps(args.num_steps, resolution)
    d3po = D3POLearner(
        policy, denoiser, lr=1e-4, beta=0.1, clip=0.1, guidance_scale=args.guidance_scale, eta=1.0
    )

    def d3po_step():
        return d3po.step(batch, cond, uncond)

    rows.append(measure("D3PO", d3po_step, policy, device, args.repeats) | {"sampled": sampled})

    memory = "peak allocated" if device.type == "cuda" else "process peak RSS"
    print(f"| step | items per step | s per step | {memory} (GiB) | sampling the items (s) |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        seconds, peak, sampled = f"{row['seconds']:.3f}", f"{row['peak'] / GiB:.2f}", f"{row['sampled']:.1f}"
        print(f"| {row['step']} | {args.batch} | {seconds} | {peak} | {sampled} |")
    return rows


if __name__ == "__main__":
    run(parse_args(sys.argv[1:]))
