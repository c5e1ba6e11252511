"""Scale-up on one machine: a job that asks for more GPU samplers than the head holds makes the autoscaler
add nodes, succeeds, and the nodes go once idle (slow tier).

The cluster is Ray's fake multi-node provider (tests/fake_cluster.yaml): `RAY_FAKE_CLUSTER=1 ray start
--head --autoscaling-config=...` runs the real autoscaler, which starts each node it adds as raylet
processes here, with fake GPUs (no CUDA: the samplers run on the CPU). Stopped by process group only.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from processes import SMALL_EVAL, free_port, start_ray_head, stop_process, submit_job, wait_http

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _wait_for(pattern: str, path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if re.search(pattern, text):
            return text
        time.sleep(2)
    raise TimeoutError(f"{pattern!r} not in {path} after {timeout_s:g} s")


def test_demand_beyond_the_head_adds_nodes_the_job_succeeds_and_idle_nodes_go(tmp_path):
    gcs_port, dashboard_port = free_port(), free_port()
    config = yaml.safe_load((ROOT / "tests" / "fake_cluster.yaml").read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{gcs_port}"  # where the added nodes join
    (tmp_path / "fake_cluster.yaml").write_text(yaml.safe_dump(config))
    ray_temp = Path(tempfile.mkdtemp(prefix="rlft-fake-", dir="/tmp"))  # socket paths stay short
    env = os.environ | {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_FAKE_CLUSTER": "1",
    }
    env.pop("RAY_ADDRESS", None)
    head = start_ray_head(
        BIN / "ray",
        gcs_port,
        dashboard_port,
        ray_temp,
        env,
        tmp_path / "ray.log",
        "--num-cpus=4",
        '--resources={"trainer": 1}',  # the train worker stays on the head (--worker-resource trainer)
        f"--autoscaling-config={tmp_path / 'fake_cluster.yaml'}",
    )
    monitor = ray_temp / "session_latest" / "logs" / "monitor.log"
    try:
        wait_http(f"http://127.0.0.1:{dashboard_port}/api/version", 120)
        job = [
            *(
                "python",
                str(ROOT / "jobs" / "d3po.py"),
                "--epochs",
                "1",
                "--pairs-per-epoch",
                "4",
                "--num-steps",
                "3",
            ),
            *("--samplers", "2", "--sampler-gpus", "1", "--ready-timeout-s", "300", "--no-track"),
            *("--worker-resource", "trainer", *SMALL_EVAL),
            *("--runs-dir", str(tmp_path / "runs"), "--run-name", "scaled"),
        ]
        # No --working-dir: each fake node runs its own runtime-env agent over the head's one session folder,
        # and one that drops the job's unpacked working dir from its cache deletes it under the running
        # driver. The venv holds the project (editable), so the job runs its script by absolute path.
        result = submit_job(f"http://127.0.0.1:{dashboard_port}", job, env)
        assert "an autoscaler adds nodes to this cluster" in result.stdout, result.stdout[-5000:]
        assert "2 sampler(s), 1 scorer(s), 1 train worker(s) ready" in result.stdout
        assert "epoch   0 | eval" in result.stdout
        # The head has no GPU: both samplers ran on GPU nodes the autoscaler added for them ...
        added = re.findall(r"Adding (\d+) node\(s\) of type fake_gpu_sampler", monitor.read_text())
        assert added and max(map(int, added)) >= 1, monitor.read_text()[-3000:]
        # ... and removed once they had been idle for idle_timeout_minutes (15 s).
        _wait_for(r"Removing \d+ nodes of type fake_gpu_sampler \(idle\)", monitor, 180)
        status = subprocess.run(
            [str(BIN / "ray"), "status", f"--address=127.0.0.1:{gcs_port}"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        active = status.stdout.split("Active:")[1].split("Pending:")[0]
        assert "ray.head.default" in active and "fake_gpu_sampler" not in active, status.stdout
    finally:
        stop_process(head)
        shutil.rmtree(ray_temp, ignore_errors=True)
