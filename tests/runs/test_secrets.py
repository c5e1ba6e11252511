"""Credentials in storage and tracking URLs never reach MLflow, a printed line or an error message."""

import base64
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from mlflow.tracking import MlflowClient

from rlft.configs import D3POConfig
from rlft.job import run_job
from rlft.runs.secrets import redact
from rlft.runs.tracking import Tracker, check_tracking_uri


def test_the_user_and_password_of_every_url_are_masked():
    assert redact("s3://AKIA:SECRET@bucket/runs") == "s3://***@bucket/runs"
    assert redact("storage='http://user:pw@host:5000/x' failed") == "storage='http://***@host:5000/x' failed"
    assert redact("gs://bucket/runs and a@b.c") == "gs://bucket/runs and a@b.c"  # nothing to mask


def test_mlflow_params_and_the_error_tag_hold_no_credentials(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {"storage": "s3://AKIA:SECRET@bucket/runs", "lr": 0.1}
    with pytest.raises(OSError), Tracker("run", config, {}, uri=uri) as tracker:
        raise OSError("storage='s3://AKIA:SECRET@bucket/runs': upload failed")
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.data.params["storage"] == "s3://***@bucket/runs"
    assert "SECRET" not in run.data.tags["error"] and "***@bucket" in run.data.tags["error"]


@pytest.fixture
def server_with_a_password():
    """An MLflow-like /health that answers 200 only to user:pw (basic auth)."""
    expected = "Basic " + base64.b64encode(b"user:pw").decode()

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.headers.get("Authorization") == expected else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()


def test_a_tracking_url_with_a_user_and_password_is_reachable_and_a_wrong_one_is_named_masked(
    server_with_a_password,
):
    check_tracking_uri(f"http://user:pw@127.0.0.1:{server_with_a_password}")
    with pytest.raises(ValueError, match=r"'http://\*\*\*@127.0.0.1:\d+' is unreachable") as refused:
        check_tracking_uri(f"http://user:wrong@127.0.0.1:{server_with_a_password}")
    assert "wrong" not in str(refused.value)


def test_a_refused_job_prints_no_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:SECRET@127.0.0.1:9")  # nothing listens
    monkeypatch.setattr(sys, "argv", ["d3po.py", "--runs-dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exited:
        run_job(D3POConfig, "d3po", "")
    assert "unreachable" in str(exited.value.code) and "SECRET" not in str(exited.value.code)
    with pytest.raises(ValueError) as refused:
        D3POConfig(storage="s3://AKIA:SECRET@/runs")  # no bucket: named, masked
    assert "SECRET" not in str(refused.value)
