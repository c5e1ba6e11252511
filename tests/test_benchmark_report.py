"""benchmarks/report.py's table and README block, and the process-tree memory it reads (the benchmarks
themselves take minutes: run `python benchmarks/report.py`)."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import process_memory  # noqa: E402
import report  # noqa: E402

SHARES = [("convolution", 0.38, 0.68), ("matmul", 0.2, 0.24), ("attention", 0.21, 0.08), ("other", 0.21, 0.0)]
CORE = {"sampler_over_pipeline": 0.97, "d3po_flops": 30e9, "matmul_peak_flops": 60e9, "sampler_flops": 15e9}
CORE |= {"sampler_peak_flops": 50e9}  # each rate against the peak measured in turns with it
CORE |= {"d3po_time_shares": SHARES, "d3po_ms_per_item": 30.0}
COMPILED = CORE | {"d3po_flops": 36e9, "d3po_ms_per_item": 25.0}
RAY = {
    "ray_init_s": 4.0,
    "init_to_ready_s": 30.0,
    "start_up_cpu_s": 50.0,
    "single_epoch_s": 12.0,
    "ray_over_single": 1.18,
    "tree_peak_bytes": 2.5e9,
    "beside_idle_ray_over_single": 1.17,
    "idle_tree_core_share": 0.13,
}


def test_each_figure_is_judged_against_its_target():
    rows = {
        figure: (shown, met)
        for figure, shown, _, met in report.rows(
            CORE, CORE, COMPILED, RAY, {"pipelined_over_sequential": 0.72}, 0.5e9
        )
    }
    assert rows["sampler / stock pipeline, 2 threads"] == ("0.970", "yes")
    assert rows["D3PO update, FLOP rate / matmul peak, 2 threads"] == ("50 %", "**no**")
    assert rows["D3PO update, FLOP rate / matmul peak, 1 thread"] == ("50 %", "")  # no target
    assert rows["sampler, FLOP rate / matmul peak, 2 threads"] == ("30 %", "")
    split = rows["D3PO update's time by kind of op (convolution/matmul/attention/other), 2 threads"]
    assert split == ("38 / 20 / 21 / 21 % (FLOPs 68 / 24 / 8 / 0 %)", "")
    assert rows["D3PO update with --compile, FLOP rate / matmul peak, 2 threads"] == ("60 %", "yes")
    assert rows["D3PO update with --compile / without, time per item, 2 threads"] == ("0.833", "")
    assert rows["Ray epoch / single-process epoch, 2 threads"] == ("1.180", "**no**")
    beside = rows["single-process epoch beside a local Ray run's idle process tree / alone, 2 threads"]
    assert beside == ("1.170 (the idle tree used 13 % of a core)", "")  # an explanation, no target
    assert rows["pipelined / sequential epoch on Ray, 1 thread each"] == ("0.720", "**no**")
    start = rows["local Ray: ray.init + until the actors are ready (the first epoch starts)"]
    shown = "34.0 s (4.0 + 30.0; 2.8 single-process epochs; 50 s of CPU in all processes by then)"
    assert start == (shown, "**no**")
    assert rows["local Ray run, whole process tree, peak (PSS)"] == ("2.50 GB", "yes")
    assert rows["one process, peak (RSS)"] == ("0.50 GB", "yes")


def test_the_readme_block_is_replaced_and_nothing_else(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{report.START}\nold table\n{report.END}\nafter\n")
    monkeypatch.setattr(report, "README", readme)
    report.rewrite_readme("new table")
    assert readme.read_text() == f"before\n{report.START}\nnew table\n{report.END}\nafter\n"


def test_a_readme_without_the_block_is_refused_unchanged(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("no block here\n")
    monkeypatch.setattr(report, "README", readme)
    with pytest.raises(ValueError, match="no <!-- benchmarks/report.py: start -->"):
        report.rewrite_readme("new table")
    assert readme.read_text() == "no block here\n"


def test_the_projects_readme_has_the_block():
    text = (ROOT / "README.md").read_text()
    assert text.index(report.START) < text.index(report.END)


def test_the_tree_memory_counts_a_child_process():
    alone = process_memory.PeakTreeMemory()
    with alone:
        pass
    child = subprocess.Popen(
        [sys.executable, "-c", "x = bytearray(200_000_000); input()"], stdin=subprocess.PIPE
    )
    try:
        with process_memory.PeakTreeMemory(every_s=0.05) as with_child:
            deadline = time.monotonic() + 30  # the child fills its 200 MB in well under a second
            while with_child.bytes < alone.bytes + 150e6 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        child.communicate(b"\n", timeout=30)
    assert with_child.bytes >= alone.bytes + 150e6
    assert "python" in "".join(with_child.by_name)


def test_the_cpu_time_of_a_busy_child_is_counted_and_an_ended_one_left_out():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        children = process_memory.psutil.Process().children()
        assert {busy.pid, ended.pid} <= {child.pid for child in children}  # both listed while alive
        ended.wait(timeout=30)
        deadline = time.monotonic() + 30  # half a CPU-second takes well under a second alone
        used = process_memory.cpu_seconds(children)
        while used[busy.pid][1] < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
            used = process_memory.cpu_seconds(children)
    finally:
        busy.kill()
        busy.wait(timeout=30)
    assert used[busy.pid][1] >= 0.5
    assert ended.pid not in used
