"""A submitted job keeps its work out of Ray's temporary copy of the code."""

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from rlft.configs import D3POConfig
from rlft.runs.places import RAY_JOB_CONFIG, durable_runs_dir, in_ray_working_copy
from rlft.runs.tracking import Tracker, tracking_uri


def submitted(monkeypatch, home):
    """The environment Ray's job supervisor gives a job submitted with --working-dir."""
    runtime_env = {"working_dir": "gcs://_ray_pkg_0123.zip"}
    monkeypatch.setenv(RAY_JOB_CONFIG, json.dumps({"runtime_env": runtime_env, "metadata": {}}))
    monkeypatch.setenv("RLFT_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_a_job_run_here_keeps_its_runs_and_store_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RAY_JOB_CONFIG, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert not in_ray_working_copy()
    assert durable_runs_dir("runs") == tmp_path / "runs"
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_submitted_job_keeps_runs_and_store_under_rlft_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # stands for Ray's unpacked copy of the code
    submitted(monkeypatch, tmp_path / "home")
    assert in_ray_working_copy()
    assert durable_runs_dir("runs") == tmp_path / "home" / "runs"
    assert durable_runs_dir("/data/runs") == Path("/data/runs")  # an absolute folder stays
    assert tracking_uri() == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    assert (tmp_path / "home").is_dir()  # made, so the store's reachability check finds its folder


def test_rlft_runs_dir_sets_the_default_runs_folder(monkeypatch):
    monkeypatch.setenv("RLFT_RUNS_DIR", "/shared/runs")
    assert D3POConfig().runs_dir == "/shared/runs"


def test_a_new_experiment_keeps_its_artifacts_beside_the_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")  # the working folder plays no part
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "places")
    with Tracker("run", {"a": 1}, {}, uri=uri):
        pass
    location = MlflowClient(uri).get_experiment_by_name("places").artifact_location
    assert location == (tmp_path / "mlartifacts" / "places").as_uri()
