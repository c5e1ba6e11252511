"""One report of every speed and memory figure on this machine, each against its target, from one sitting:
runs `core.py` at 1 and 2 threads (and at 2 with --compile), `ray_pipeline.py` at 2 threads,
`pipelined_epochs.py`, and the default D3PO job in one process for its peak memory, one after another (never
side by side: they would share the cores), and writes docs/performance.md: the table, stamped with the date,
the machine and the command. Times are given as ratios measured in the same run wherever the target is a
ratio; start-up is given in seconds and as a multiple of the same run's single-process epoch.

    python benchmarks/speed/report.py                # about 25 minutes on 2 cores
    python benchmarks/speed/report.py --report-only  # the page again from docs/performance.json, running none

The benchmarks' own figures go to docs/performance.json beside the page, with the stamp, so the page can be
written again (a new table layout, a new row from figures already measured) without measuring again.
Whatever follows the line `<!-- notes -->` in an existing page (the hand-written notes) is kept.
Needs no GPU or MLflow (the Ray figures need Ray).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE.parents[1] / "docs" / "performance.md"
FIGURES = PAGE.with_suffix(".json")
COMMAND = "python benchmarks/speed/report.py"
NOTES = "<!-- notes -->"
TITLE = "# Speed and memory on one machine"


def run_benchmark(script: str, *flags: str) -> dict:
    """Run benchmarks/speed/<script> with `flags` (its output shown as it goes); the figures it wrote."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "figures.json"
        print(f"$ python benchmarks/speed/{script} {' '.join(flags)}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *flags, "--json", str(out)], check=True)
        return json.loads(out.read_text())


def one_process_peak_bytes() -> float:
    """Peak RSS of the default D3PO job in one process (2 epochs, no MLflow), from its own resource usage."""
    with tempfile.TemporaryDirectory() as folder:
        flags = ["--no-ray", "--epochs", "2", "--no-track", "--runs-dir", folder, "--run-name", "memory"]
        print(f"$ python jobs/d3po.py {' '.join(flags[:-4])}", flush=True)
        job = subprocess.Popen([sys.executable, str(HERE.parent / "jobs" / "d3po.py"), *flags])
        _, status, usage = os.wait4(job.pid, 0)  # this child's usage alone, not the earlier benchmarks'
        job.returncode = os.waitstatus_to_exitcode(status)
        if job.returncode != 0:
            raise subprocess.CalledProcessError(job.returncode, job.args)
    return usage.ru_maxrss * 1024.0  # kB on Linux


def time_split(shares: list) -> str:
    """'38 / 20 / 21 / 21 % (FLOPs 68 / 24 / 8 / 0 %)' from core.py's (kind, time share, FLOP share) list."""
    times = " / ".join(f"{100 * time:.0f}" for _, time, _ in shares)
    return f"{times} % (FLOPs {' / '.join(f'{100 * flops:.0f}' for _, _, flops in shares)} %)"


def rows(
    core1: dict, core2: dict, compiled: dict, ray: dict, pipelined: dict, one_process: float
) -> list[tuple[str, ...]]:
    """(figure, measured, target, met) for each figure, from the benchmarks' figures (`compiled`: core.py at
    2 threads with --compile)."""
    start_up = ray["ray_init_s"] + ray["init_to_ready_s"]
    split = f"{ray['ray_init_s']:.1f} + {ray['init_to_ready_s']:.1f}"
    rate1, rate2, rate_c = (100 * c["d3po_flops"] / c["matmul_peak_flops"] for c in (core1, core2, compiled))
    kinds = "/".join(kind for kind, _, _ in core2["d3po_time_shares"])
    figures = [  # (figure, value, as shown, target)
        ("sampler / stock pipeline, 1 thread", core1["sampler_over_pipeline"], "{:.3f}", ">= 0.95"),
        ("sampler / stock pipeline, 2 threads", core2["sampler_over_pipeline"], "{:.3f}", ">= 0.95"),
        (
            "sampler, FLOP rate / matmul peak, 2 threads",
            100 * core2["sampler_flops"] / core2["sampler_peak_flops"],
            "{:.0f} %",
            "",
        ),
        ("D3PO update, FLOP rate / matmul peak, 1 thread", rate1, "{:.0f} %", ""),
        ("D3PO update, FLOP rate / matmul peak, 2 threads", rate2, "{:.0f} %", ">= 55 %"),
        (
            f"D3PO update's time by kind of op ({kinds}), 2 threads",
            0,
            time_split(core2["d3po_time_shares"]),
            "",
        ),
        ("D3PO update with --compile, FLOP rate / matmul peak, 2 threads", rate_c, "{:.0f} %", ">= 55 %"),
        (
            "D3PO update with --compile / without, time per item, 2 threads",
            compiled["d3po_ms_per_item"] / core2["d3po_ms_per_item"],
            "{:.3f}",
            "",
        ),
        ("Ray epoch / single-process epoch, 2 threads", ray["ray_over_single"], "{:.3f}", "<= 1.10"),
        (
            "single-process epoch beside a local Ray run's idle process tree / alone, 2 threads",
            ray["beside_idle_ray_over_single"],
            f"{{:.3f}} (the idle tree used {100 * ray['idle_tree_core_share']:.0f} % of a core)",
            "",
        ),
        (
            "pipelined / sequential epoch on Ray, 1 thread each",
            pipelined["pipelined_over_sequential"],
            "{:.3f}",
            "<= 0.70",
        ),
        (
            "local Ray: ray.init + until the actors are ready (the first epoch starts)",
            start_up,
            f"{{:.1f}} s ({split}; {start_up / ray['single_epoch_s']:.1f} single-process epochs; "
            f"{ray['start_up_cpu_s']:.0f} s of CPU in all processes by then)",
            "<= 10 s",
        ),
        (
            "local Ray run, whole process tree, peak (PSS)",
            ray["tree_peak_bytes"] / 1e9,
            "{:.2f} GB",
            "< 3 GB",
        ),
        ("one process, peak (RSS)", one_process / 1e9, "{:.2f} GB", "< 0.8 GB"),
    ]
    return [(f, shown.format(value), target, meets(value, target)) for f, value, shown, target in figures]


def meets(value: float, target: str) -> str:
    """'yes' or '**no**' for a target written as '>= 0.95', '<= 10 s' or '< 3 GB' (its unit the value's);
    '' for no target."""
    if not target:
        return ""
    sign, number = target.split()[:2]
    bound = float(number)
    met = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[sign]
    return "yes" if met else "**no**"


def table(measured: list[tuple[str, ...]]) -> str:
    lines = ["| figure | measured | target | met |", "| --- | --- | --- | --- |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in measured])


def this_machine() -> str:
    """'<the CPU's name>, x86_64, 2 cores': the CPU's name where Linux gives it, the architecture, the
    cores."""
    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        cpu = f"{names[0]}, " if names else ""
    return f"{cpu}{platform.machine()}, {os.cpu_count()} cores"


def stamp(machine: str, day: str, command: str = COMMAND) -> dict[str, str]:
    return {"machine": machine, "date": day, "command": command}


def page(text: str, where: dict[str, str], notes: str = "") -> str:
    """The page: a title, the stamp (what wrote the table, where and when), the table, then the notes."""
    return (
        f"{TITLE}\n\n"
        f"Generated by `{where['command']}` on {where['machine']}, {where['date']}: every figure in one "
        "sitting, one benchmark after another. Do not edit the table by hand: run the command again (the "
        f"notes below the line `{NOTES}` are kept).\n\n{text}\n\n{NOTES}{notes}"
    )


def write_page(text: str, where: dict[str, str], path: Path | None = None) -> None:
    """Write the page at `path` (default: docs/performance.md), keeping the notes of the page there."""
    path = path or PAGE
    old = path.read_text() if path.exists() else ""
    marker = f"\n{NOTES}\n"  # the line of its own; the stamp above the table names it too
    notes = "\n" + old.split(marker, 1)[1] if marker in old else "\n"
    path.write_text(page(text, where, notes))


def measure() -> dict:
    """Every benchmark, one after another: {"core1", "core2", "compiled", "ray", "pipelined",
    "one_process"} (bytes), the arguments of `rows`."""
    return {
        "core1": run_benchmark("core.py", "--threads", "1"),
        "core2": run_benchmark("core.py", "--threads", "2"),
        "compiled": run_benchmark("core.py", "--threads", "2", "--compile"),
        "ray": run_benchmark("ray_pipeline.py", "--threads", "2"),
        "pipelined": run_benchmark("pipelined_epochs.py"),
        "one_process": one_process_peak_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--report-only", action="store_true", help=f"write the page from {FIGURES.name} without measuring"
    )
    args = parser.parse_args()
    if args.report_only:
        if not FIGURES.is_file():
            sys.exit(f"error: no {FIGURES}: run {COMMAND} without --report-only to measure the figures")
        saved = json.loads(FIGURES.read_text())
        figures, where = saved["figures"], saved["stamp"]
    else:
        figures, where = measure(), stamp(this_machine(), f"{date.today():%d %B %Y}")
        FIGURES.write_text(json.dumps({"stamp": where, "figures": figures}, indent=1) + "\n")
    text = table(rows(**figures))
    print("\n" + text)
    write_page(text, where)
    print(f"\nwrote {PAGE} ({where['machine']}, {where['date']})")


if __name__ == "__main__":
    main()
