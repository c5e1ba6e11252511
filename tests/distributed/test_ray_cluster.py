"""The jobs as users run them: `ray job submit` to a `ray start --head` cluster, tracked by a real
`mlflow server` (slow tier). Only the processes these tests start are stopped, by process group: `ray stop`
would kill every Ray process on the machine."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from processes import (
    SMALL_EVAL,
    free_port,
    start_process,
    start_ray_head,
    stop_process,
    submit_job,
    wait_http,
)

from rlft.zoo.loading import load_pipeline

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(dashboard address, MLflow URI, environment) of a loopback Ray head and an MLflow server."""
    folder = tmp_path_factory.mktemp("cluster")
    # Ray's socket paths live under its temp dir and must stay under 108 bytes: a short folder in /tmp.
    ray_temp = Path(tempfile.mkdtemp(prefix="rlft-ray-", dir="/tmp"))
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env |= {"RLFT_HOME": str(folder / "rlft-home")}  # where a submitted job keeps runs and its default store
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow_port, gcs_port, dashboard_port = free_port(), free_port(), free_port()
    mlflow = start_process(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
            "--workers",
            "1",
        ],
        env,
        folder / "mlflow.log",
    )
    head = start_ray_head(
        BIN / "ray", gcs_port, dashboard_port, ray_temp, env, folder / "ray.log", "--num-cpus=6"
    )
    try:
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", 120)
        wait_http(f"http://127.0.0.1:{dashboard_port}/api/version", 120)
        yield f"http://127.0.0.1:{dashboard_port}", f"http://127.0.0.1:{mlflow_port}", env
    finally:
        stop_process(head)
        stop_process(mlflow)
        shutil.rmtree(ray_temp, ignore_errors=True)


def test_a_submitted_job_succeeds_its_run_holds_every_epoch_and_its_adapter_loads_into_a_stock_pipeline(
    cluster, tmp_path
):
    """D3PO submitted with a working dir: its MLflow run (on the server) holds each epoch's metrics, the
    algorithm's own among them, the evaluation's, the images and the before/after grid, and the adapter it
    writes loads into a stock pipeline and changes its images. (The DRaFT and DDPO jobs share every line of
    the job code; their Ray numbers are held to one process's in tests/distributed/test_ray_pipeline.py.)"""
    address, mlflow_uri, env = cluster
    env = env | {"MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_EXPERIMENT_NAME": "cluster-tests"}
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_EXPERIMENT_NAME": "cluster-tests"}}
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(ROOT),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        "python",
        "jobs/d3po.py",
        "--epochs",
        "2",
        "--pairs-per-epoch",
        "4",
        "--num-steps",
        "4",
        "--runs-dir",
        str(tmp_path),
        "--run-name",
        "submitted",
        *SMALL_EVAL,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "epoch   1 | eval" in result.stdout, result.stdout[-3000:]
    grid = tmp_path / "submitted" / "before_after.png"
    assert f"before/after grid: {grid}" in result.stdout and grid.is_file()
    job_id = re.search(r"raysubmit_\w+", result.stdout).group(0)
    status = subprocess.run(
        [str(BIN / "ray"), "job", "status", "--address", address, job_id],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr  # SUCCEEDED

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("cluster-tests").experiment_id
    (run,) = client.search_runs([experiment], filter_string="tags.mlflow.runName = 'submitted'")
    assert run.info.status == "FINISHED" and run.data.tags["algorithm"] == "d3po"
    assert run.data.params["reward"] == "jpeg-compressibility"
    shared = ("reward_mean", "reward_std", "loss", "samples_per_s", "epoch_time_s", "eval_reward_mean")
    own = ("preference_accuracy", "reward_margin", "eval_reward_se", "eval_gain_mean", "eval_gain_se")
    for key in shared + own:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    images = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    assert {"images/epoch_0000.png", "images/epoch_0001.png"} <= images
    assert "before_after.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert client.list_artifacts(run.info.run_id, "adapter")[0].path.endswith(".safetensors")

    stock = load_pipeline("tiny")

    def sample():
        generator = torch.Generator().manual_seed(0)
        prompt = "a small red circle on a plain blue background"
        return stock(prompt, num_inference_steps=4, output_type="pt", generator=generator).images

    before = sample()
    stock.load_lora_weights(tmp_path / "submitted" / "adapter")
    assert (sample() - before).abs().max() > 0  # two epochs of training changed the model


def test_a_job_submitted_as_the_readme_says_keeps_its_work_out_of_rays_copy_of_the_code(cluster):
    """No --runs-dir, no MLFLOW_TRACKING_URI, `--working-dir .` from the checkout: the run folder and the
    default MLflow store with its artifacts land under RLFT_HOME, not in Ray's unpacked copy, which Ray
    deletes when the code changes."""
    address, _, env = cluster
    flags = [
        "--epochs",
        "1",
        "--pairs-per-epoch",
        "4",
        "--num-steps",
        "4",
        "--run-name",
        "readme",
        *SMALL_EVAL,
    ]
    result = submit_job(address, ["python", "jobs/d3po.py", *flags], env, "--working-dir", ".")
    home = Path(env["RLFT_HOME"])
    run = home / "runs" / "readme"
    assert f"adapter in {run}/adapter" in result.stdout  # absolute paths in the summary
    assert (run / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    assert (run / "checkpoint" / "state.pt").is_file() and (run / "before_after.png").is_file()
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rlft")
    (found,) = client.search_runs([experiment.experiment_id], filter_string="tags.mlflow.runName = 'readme'")
    artifacts = home / "mlartifacts" / "rlft" / found.info.run_id / "artifacts"
    assert (artifacts / "images" / "epoch_0000.png").is_file() and (artifacts / "before_after.png").is_file()
