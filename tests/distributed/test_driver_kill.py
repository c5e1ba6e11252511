"""The driver killed mid-run: the same command again resumes after the last finished epoch (slow tier).

The job runs as users run it, a process with its own local Ray; SIGKILL to its whole process group takes the
driver and that Ray down at once, as losing the head machine would. Nothing is flushed or cleaned up first.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from processes import SMALL_EVAL

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--epochs", "3", "--pairs-per-epoch", "4", "--num-steps", "3", "--batch-size", "4", "--threads", "1"]
FLAGS += SMALL_EVAL  # a small evaluation set: the test is about resuming


def test_a_killed_driver_resumes_after_its_last_finished_epoch_and_logs_each_epoch_once(tmp_path):
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "jobs/d3po.py", *FLAGS, "--runs-dir", str(tmp_path), "--run-name", "killed"]
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 600
    while "epoch   0 |" not in log.read_text():
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(1.0)  # mid-way through epoch 1
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert "epoch   2 |" not in log.read_text()

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    resumed_after = 1 if "epoch   1 |" in log.read_text() else 0
    assert f"resuming {tmp_path / 'killed'} after epoch {resumed_after}" in second.stdout
    assert "epoch   2 |" in second.stdout and "epoch   0 |" not in second.stdout

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs(
        [client.get_experiment_by_name("rlft").experiment_id], "tags.mlflow.runName = 'killed'"
    )
    assert [m.step for m in client.get_metric_history(run.info.run_id, "reward_mean")] == [0, 1, 2]
    assert run.info.status == "FINISHED"
