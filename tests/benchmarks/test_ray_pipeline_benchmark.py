"""benchmarks/speed/ray_pipeline.py's start-up accounting (the benchmark itself takes minutes: run it)."""

import subprocess
import sys
import time

import psutil
from benchmark_scripts import load

BURN_THEN_WAIT = (
    "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\ntime.sleep(60)"
)


def test_the_ready_line_keeps_the_time_and_each_processs_cpu_seconds_once():
    """The first line with the text stamps the time and the CPU seconds of this process ('driver') and of
    every process below it, by name; other lines, and later matching ones, change nothing."""
    benchmark = load("ray_pipeline")
    child = subprocess.Popen([sys.executable, "-c", BURN_THEN_WAIT])
    try:
        deadline = time.monotonic() + 30
        while sum(psutil.Process(child.pid).cpu_times()[:2]) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = benchmark.FirstLine(" ready (")
        ready("starting the samplers")
        assert ready.at is None and ready.cpu_by_name == {}
        ready("1 sampler(s), 1 scorer(s), 1 train worker(s) ready (3.0 s)")
        at, spent = ready.at, dict(ready.cpu_by_name)
        assert at is not None and spent["driver"] > 0
        assert max(seconds for name, seconds in spent.items() if name != "driver") >= 0.5  # the child's
        ready("1 sampler(s) ready (9.0 s)")
        assert (ready.at, ready.cpu_by_name) == (at, spent)
    finally:
        child.kill()
        child.wait()
