"""Benchmark of the core: sampler throughput against the stock pipeline, and D3PO training speed.

Prints, for the same model and inputs in one run:
1. images/s of `sample_trajectories` (recording every latent and log-prob) and of a plain
   `StableDiffusionPipeline.__call__`, and their ratio (target >= 0.95); the sampler's FLOP rate against
   this machine's matrix-multiply peak (target on a GPU >= 40 %). The two samplers and the peak's matrix
   products take turns in each timed round, and each one's best round counts;
2. D3PO training time per (pair, timestep) item over a whole epoch, its FLOP rate (FLOPs counted with
   `torch.utils.flop_counter`, which this script teaches the CPU's attention kernels), and that rate
   against the peak (target >= 55 % at 2 threads on a CPU, >= 30 % on a GPU), the epoch and the peak's
   products taking turns, their medians over the rounds compared; then, uncompiled, where the
   update's time goes: each kind of op's share of the time and of the FLOPs (torch.profiler).

Runs without Ray or MLflow:  python benchmarks/speed/core.py [--model tiny] [--threads 2] [--device cpu]
[--dtype bfloat16] [--compile]
(`--json PATH` also writes the figures there, for benchmarks/speed/report.py.)
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from rlft.algorithms.d3po import D3POLearner
from rlft.algorithms.pairs import pair_items
from rlft.diffusion.policy import Policy
from rlft.diffusion.sampling import sample_trajectories
from rlft.epoch import iterate_batches
from rlft.families.registry import denoiser_for
from rlft.prompts import PROMPT_SETS
from rlft.zoo.loading import load_pipeline


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


aten = torch.ops.aten
# torch's FLOP counter knows the GPU's attention kernels but not the CPU's, which would leave attention
# (a fifth of the tiny model's update time on a CPU) out of the count.
CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda grad, q, k, v, *_, **__: sdpa_backward_flop_count(grad, q, k, v)
    ),
}
MATMULS = ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear")


def op_kind(name: str) -> str:
    """'convolution', 'attention', 'matmul' or 'other' for an aten op's name (aten::addmm, aten.mm.default)"""
    op = name.removeprefix("aten::").removeprefix("aten.").split(".")[0].lstrip("_")
    if "conv" in op:
        return "convolution"
    if "scaled_dot_product" in op:
        return "attention"
    return "matmul" if op in MATMULS else "other"


def where_time_goes(fn, flop_counts: dict, device: torch.device) -> list[tuple[str, float, float]]:
    """(kind, share of the time, share of the FLOPs) per kind of op, for one call of `fn`: the kernels' own
    time (torch.profiler) against the FLOPs `FlopCounterMode` counted per op."""
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
        sync(device)
    times: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("aten::"):  # the ops themselves, not the autograd and optimizer spans
            own = event.self_device_time_total if cuda else event.self_cpu_time_total
            times[op_kind(event.key)] = times.get(op_kind(event.key), 0.0) + own
    flops: dict[str, float] = {}
    for op, count in flop_counts.items():
        flops[op_kind(str(op))] = flops.get(op_kind(str(op)), 0.0) + count
    total_time, total_flops = sum(times.values()), sum(flops.values())
    kinds = ["convolution", "matmul", "attention", "other"]
    return [(k, times.get(k, 0.0) / total_time, flops.get(k, 0.0) / total_flops) for k in kinds]


def matmul(device: torch.device, dtype: torch.dtype) -> tuple[Callable[[], None], float]:
    """(a function doing three square matrix multiplies, their FLOPs): the machine's practical peak for this
    dtype, timed in the same rounds as what it is compared with.

    2048 saturates a CPU core; a GPU needs 8192 to reach its peak (an H100 gives half of it at 2048).
    """
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def products() -> None:
        for _ in range(3):
            a @ b

    return products, 3 * 2 * n**3


def rounds(fns: dict[str, Callable[[], None]], device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Each function's seconds in each of `repeats` rounds, after one warm-up call each. Within a round the
    functions take turns, so the load of a shared machine, which drifts over minutes, falls on each alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--pairs", type=int, default=16, help="pairs per epoch (two images each)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument(
        "--batch-size", type=int, default=16, help="(pair, timestep) items per optimizer step"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (first calls compile)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    pipe = load_pipeline(args.model, device=device, dtype=dtype)
    if args.compile:
        pipe.unet.compile()
    resolution = args.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    prompts = [PROMPT_SETS["animals"][i % len(PROMPT_SETS["animals"])] for i in range(args.pairs)]
    common = dict(guidance_scale=5.0, eta=1.0)
    print(
        f"model {args.model} | {device} {args.dtype} | threads {torch.get_num_threads()} | "
        f"{args.pairs} pairs x {args.steps} steps at {resolution}px"
    )

    # 1. Sampler against the stock pipeline: the same prompts, images, steps, guidance and eta.
    def stock():
        pipe(
            prompts,
            num_images_per_prompt=2,
            num_inference_steps=args.steps,
            height=resolution,
            width=resolution,
            output_type="pt",
            generator=torch.Generator(device).manual_seed(0),
            **common,
        )

    def ours():
        sample_trajectories(
            pipe,
            prompts,
            group_size=2,
            num_steps=args.steps,
            resolution=resolution,
            generator=torch.Generator(device).manual_seed(0),
            **common,
        )

    images = 2 * args.pairs
    products, product_flops = matmul(device, dtype)
    sampling = rounds({"stock": stock, "ours": ours, "matmul": products}, device, args.repeats)
    t_stock, t_ours = min(sampling["stock"]), min(sampling["ours"])
    print(
        f"sampler   {images / t_ours:8.2f} img/s | pipeline {images / t_stock:8.2f} img/s | "
        f"ratio {t_stock / t_ours:.3f} (target >= 0.95)"
    )
    sampler_peak = product_flops / min(sampling["matmul"])  # measured in turns with the samplers
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        ours()
    sampler_rate = counter.get_total_flops() / t_ours
    target = " (target >= 40 %)" if device.type == "cuda" else ""
    print(
        f"sampling  {sampler_rate / 1e9:8.1f} GFLOP/s | matmul peak {sampler_peak / 1e9:.1f} GFLOP/s | "
        f"{100 * sampler_rate / sampler_peak:.1f} % of peak{target}"
    )

    # 2. D3PO training over one epoch of (pair, timestep) items.
    policy = Policy(pipe.unet)
    out = sample_trajectories(
        pipe,
        prompts,
        group_size=2,
        num_steps=args.steps,
        resolution=resolution,
        generator=torch.Generator(device).manual_seed(1),
        **common,
    )
    # The first member of each pair wins: speed does not depend on who wins, and a random-weight model's
    # images can all tie on a reward.
    index_w = torch.arange(0, 2 * args.pairs, 2)
    items = pair_items(out["latents"], out["group"], out["timesteps"], index_w, index_w + 1)
    denoiser = denoiser_for(pipe)
    cond, uncond = denoiser.encode(prompts)  # one row per prompt
    learner = D3POLearner(policy, denoiser, lr=1e-4, beta=0.1, clip=0.1, **common)

    def epoch():
        order = torch.randperm(len(items["timesteps"]), generator=torch.Generator().manual_seed(0))
        learner.train_epoch(iterate_batches(items, args.batch_size, order.to(device)), cond, uncond)

    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        epoch()
    flops = counter.get_total_flops()
    training = rounds({"epoch": epoch, "matmul": products}, device, args.repeats)
    seconds, peak = (
        statistics.median(training["epoch"]),
        product_flops / statistics.median(training["matmul"]),
    )
    count = items["timesteps"].shape[0]
    rate = flops / seconds
    print(
        f"d3po      {1e3 * seconds / count:8.2f} ms per (pair, timestep) | "
        f"{count} items in {seconds:.2f} s | "
        f"{flops / count / 1e9:.3f} GFLOP per item"
    )
    print(
        f"flops     {rate / 1e9:8.1f} GFLOP/s | matmul peak {peak / 1e9:.1f} GFLOP/s | "
        f"{100 * rate / peak:.1f} % of peak (target >= {30 if device.type == 'cuda' else 55} %)"
    )
    shares = []
    if not args.compile:  # a compiled graph's kernels are fused across these kinds
        shares = where_time_goes(epoch, counter.get_flop_counts()["Global"], device)
        for kind, time_share, flop_share in shares:
            at = f"{100 * rate / peak * flop_share / time_share:5.1f} % of peak" if time_share else ""
            print(
                f"  {kind:11s} {100 * time_share:5.1f} % of the time, {100 * flop_share:5.1f} % of FLOPs {at}"
            )
    if args.json:
        figures = dict(sampler_over_pipeline=t_stock / t_ours, d3po_ms_per_item=1e3 * seconds / count)
        figures |= dict(d3po_flops=rate, matmul_peak_flops=peak, threads=torch.get_num_threads())
        figures |= dict(sampler_flops=sampler_rate, sampler_peak_flops=sampler_peak)
        figures |= dict(compiled=args.compile, d3po_time_shares=shares)
        with open(args.json, "w") as f:
            json.dump(figures, f)


if __name__ == "__main__":
    main()
