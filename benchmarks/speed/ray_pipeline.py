"""Benchmark: the Ray D3PO pipeline against the single-process loop on the same tiny config, in one run.

Prints the mean epoch time of each (the first epoch of each is left out: it pays one-off warm-up), their
ratio (target: at most 1.10 on 2 cores), the weight-sync time per epoch, and where each epoch's time goes
(sample, score, shuffle, train, sync; the rest is checkpointing and logging in the driver). Also prints the
start-up the ratio leaves out: `ray.init`, then until the sampler, scorer and train worker have their models
(the Ray run's first epoch starts then) with the CPU seconds each process had used by then (on 2 cores the
start-up is their sum over 2 at best), and the peak memory of a Ray run's whole process tree (driver, GCS,
raylet, actors, workers; PSS, so shared pages count once). Memory is read in a second, 2-epoch Ray run,
because reading it costs CPU the timed run would lose. The Ray runs go first, so the tree holds nothing the
single-process run left behind.

Last, what the Ray run's own processes cost the computation: the single-process run once more while a local
Ray run's whole tree (its actors built, waiting for work) sits idle beside it, its epoch against the
single-process epoch alone, and the share of a core the idle tree used meanwhile. Every Ray worker process
wakes its main thread about every 10 ms while it waits for a task (`strace` shows it), so an idle tree costs
the computation beside it CPU, and on 2 cores each interruption stalls the other torch thread too.
Needs no GPU or MLflow; on a GPU, `--model sd15-random --samplers 2 --sampler-gpus 0.25 --worker-gpus 0.5`
puts two samplers and the train worker on one GPU (benchmarks/gpu.sh).

    python benchmarks/speed/ray_pipeline.py [--epochs 4] [--pairs 16] [--threads N] [--scorers 1] \
        [--json PATH]
"""

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil
import ray
from process_memory import PeakTreeMemory, cpu_seconds

from rlft.configs import D3POConfig
from rlft.distributed.cluster import start_ray
from rlft.distributed.launch import launch

PHASES = ("time_sample_s", "time_score_s", "time_shuffle_s", "time_train_s", "time_sync_s")


def summary(name: str, history: list[dict], total: float) -> float:
    steady = history[1:]
    epoch = sum(h["epoch_time_s"] for h in steady) / len(steady)
    phases = {p: sum(h.get(p, 0.0) for h in steady) / len(steady) for p in PHASES}
    rest = epoch - sum(phases.values())
    start_up = total - sum(h["epoch_time_s"] for h in history)
    split = " | ".join(f"{p[5:-2]} {v:5.2f}" for p, v in phases.items()) + f" | rest {rest:5.2f}"
    print(f"{name:15s} epoch {epoch:6.2f} s | {split} | start-up and wrap-up {start_up:5.1f} s")
    return epoch


class FirstLine:
    """A `log` that keeps the time the first line containing `text` arrived, and the CPU seconds this process
    and every process below it had used by then, by process name (this one: "driver")."""

    def __init__(self, text: str):
        self.text, self.at, self.cpu_by_name = text, None, {}

    def __call__(self, line: str) -> None:
        if self.at is None and self.text in line:
            self.at = time.perf_counter()
            driver = psutil.Process()
            for pid, (name, seconds) in cpu_seconds([driver, *driver.children(recursive=True)]).items():
                name = "driver" if pid == driver.pid else name
                self.cpu_by_name[name] = self.cpu_by_name.get(name, 0.0) + seconds


def run_on_ray(cfg: D3POConfig, folder: Path) -> tuple[list[dict], float, float, float, dict[str, float]]:
    """A run on a new local Ray: (its history, ray.init's seconds, seconds from then until the actors are
    ready, seconds from then to the end of the run, the CPU seconds each process name had used when the actors
    were ready)."""
    ready = FirstLine(" ready (")
    start = time.perf_counter()
    start_ray(cfg, log=lambda line: None)
    started = time.perf_counter()
    # As the job does: the actors start, then the driver imports the training code while they load.
    launched = launch(cfg, folder, log=ready)
    from rlft.distributed.ray_loop import ray_train

    history = ray_train(cfg, folder, log=ready, launched=launched)
    total = time.perf_counter() - started
    ray.shutdown()
    return history, started - start, ready.at - started, total, ready.cpu_by_name


def beside_idle_ray(cfg: D3POConfig, folder: Path) -> tuple[list[dict], float, float, dict[str, float]]:
    """The single-process run beside a local Ray run's idle tree: (its history, its seconds, the share of a
    core the tree used meanwhile, that share by process name)."""
    from rlft.local import train_local

    start_ray(cfg, log=lambda line: None)
    launched = launch(cfg, folder / "idle", log=lambda line: None)
    try:
        launched.workers.wait_started()
        ray.get([actor.__ray_ready__.remote() for actor in launched.samplers + launched.scorers])
        tree = psutil.Process().children(recursive=True)
        before = cpu_seconds(tree)
        start = time.perf_counter()
        history = train_local(cfg, folder / "beside", log=lambda line: None)
        total = time.perf_counter() - start
        after = cpu_seconds(tree)
    finally:
        launched.stop()
        ray.shutdown()
    by_name: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        if pid in before:
            by_name[name] = by_name.get(name, 0.0) + (seconds - before[pid][1]) / total
    return history, total, sum(by_name.values()), by_name


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--scorers", type=int, default=1, help="0: the samplers score their own images")
    parser.add_argument("--model", default="tiny", help="any rlft model name (sd15-random: on a GPU)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--samplers", type=int, default=1)
    parser.add_argument("--sampler-gpus", type=float, default=0.0, help="a fraction shares a GPU")
    parser.add_argument("--worker-gpus", type=float, default=0.0)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    counts = dict(
        epochs=args.epochs, pairs_per_epoch=args.pairs, scorers=args.scorers, samplers=args.samplers
    )
    gpus = dict(sampler_gpus=args.sampler_gpus, worker_gpus=args.worker_gpus)
    cfg = D3POConfig(model=args.model, dtype=args.dtype, threads=args.threads, track=False, **counts, **gpus)
    with tempfile.TemporaryDirectory() as folder:
        # The timed run goes without the memory sampler: reading every process's PSS twice a second takes
        # about a third of a core here, which slowed the Ray epochs it watched (ratio 1.73 with it).
        on_ray, ray_init_s, to_ready, ray_total, start_cpu = run_on_ray(cfg, Path(folder) / "ray")
        with PeakTreeMemory() as tree:
            run_on_ray(replace(cfg, epochs=2), Path(folder) / "memory")

        # The model code, imported only now: the Ray runs above start as the job does.
        from rlft.local import train_local

        start_single = time.perf_counter()
        single = train_local(cfg, Path(folder) / "single", log=lambda line: None)
        single_total = time.perf_counter() - start_single
        beside, beside_total, idle_share, idle_by_name = beside_idle_ray(cfg, Path(folder))
    print(
        f"D3PO, {cfg.model} ({cfg.dtype}), {args.pairs} pairs x {cfg.num_steps} steps per epoch, "
        f"{args.epochs} epochs; {cfg.samplers} sampler(s) with {cfg.sampler_gpus} GPU each, a train worker "
        f"with {cfg.worker_gpus}"
    )
    a = summary("single-process", single, single_total)
    b = summary("ray", on_ray, ray_total)
    print(f"ray.init      {ray_init_s:6.2f} s, then {to_ready:.2f} s until the actors are ready")
    spent = ", ".join(f"{name} {used:.1f}" for name, used in sorted(start_cpu.items(), key=lambda i: -i[1]))
    print(f"start-up CPU  {sum(start_cpu.values()):6.1f} s of CPU by then, all processes (s: {spent})")
    largest_first = sorted(tree.by_name.items(), key=lambda item: -item[1])
    peak = ", ".join(f"{name} {used / 1e9:.2f}" for name, used in largest_first)
    print(f"memory        {tree.bytes / 1e9:6.2f} GB at a 2-epoch Ray run's peak (PSS, GB: {peak})")
    print(f"ratio         {b / a:6.3f} (ray / single-process epoch time; target <= 1.10)")
    c = summary("beside idle Ray", beside, beside_total)
    busiest = sorted(idle_by_name.items(), key=lambda item: -item[1])[:6]
    shares = ", ".join(f"{name} {100 * share:.1f}" for name, share in busiest)
    print(
        f"idle Ray      {c / a:6.3f} (single-process epoch beside an idle Ray run's tree / alone); the tree "
        f"({len(idle_by_name)} process names) used {100 * idle_share:.0f} % of a core (busiest, %: {shares})"
    )
    if args.json:
        figures = dict(ray_over_single=b / a, ray_epoch_s=b, single_epoch_s=a)
        figures |= dict(ray_init_s=ray_init_s, init_to_ready_s=to_ready, tree_peak_bytes=tree.bytes)
        figures |= dict(start_up_cpu_s=sum(start_cpu.values()))
        figures |= dict(beside_idle_ray_over_single=c / a, idle_tree_core_share=idle_share)
        with open(args.json, "w") as f:
            json.dump(figures, f)


if __name__ == "__main__":
    main()
