"""Checkpoints on shared storage, a local folder and S3 (moto's server standing in): the newest complete
epoch wins, half-uploads are ignored, old epochs are pruned, and a run whose disk was lost resumes."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from moto.server import ThreadedMotoServer
from processes import SMALL_EVAL, free_port

from rlft.configs import D3POConfig, DRaFTConfig
from rlft.local import train_local
from rlft.runs.checkpoint import load_checkpoint, save_checkpoint
from rlft.runs.storage import MARKER, RunStorage, check_reachable

ROOT = Path(__file__).resolve().parents[2]
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server with a bucket `rlft`; yields its `?endpoint_override=...` URI suffix."""
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    query = f"?endpoint_override=127.0.0.1:{port}&scheme=http"
    fs, _ = pafs.FileSystem.from_uri(f"s3://rlft{query}&allow_bucket_creation=true")
    fs.create_dir("rlft")
    yield query
    server.stop()
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(params=["folder", "s3"])
def storage_uri(request, tmp_path):
    if request.param == "folder":
        return str(tmp_path / "shared")
    return f"s3://rlft/{tmp_path.name}{request.getfixturevalue('s3_endpoint')}"


def _save(folder: Path, epoch: int, storage: RunStorage | None) -> None:
    save_checkpoint(
        folder,
        epoch=epoch,
        history=[{"reward_mean": float(e)} for e in range(epoch + 1)],
        state={"weights": {"w": torch.full((3,), float(epoch))}, "optimizer": {}},
        adapter={"adapter_model.safetensors": bytes([epoch])},
        storage=storage,
    )


def test_the_newest_complete_epoch_wins_half_uploads_are_ignored_and_old_epochs_pruned(storage_uri, tmp_path):
    storage = RunStorage(storage_uri, "run")
    for epoch in range(3):
        _save(tmp_path / "head" / "checkpoint", epoch, storage)
    assert storage.epoch_folders() == {1: True, 2: True}  # epoch 0 pruned
    # A crash while uploading epoch 3: its folder has files but no marker.
    storage.fs.create_dir(f"{storage.checkpoints}/epoch_0003")
    with storage.fs.open_output_stream(f"{storage.checkpoints}/epoch_0003/state.pt") as half:
        half.write(b"half")
    assert storage.epoch_folders() == {1: True, 2: True, 3: False} and storage.newest_epoch() == 2

    # A new head node: an empty local folder resumes from storage's epoch 2.
    epoch, history, state = load_checkpoint(tmp_path / "new_head" / "checkpoint", storage)
    assert epoch == 2 and [h["reward_mean"] for h in history] == [0.0, 1.0, 2.0]
    assert torch.equal(state["weights"]["w"], torch.full((3,), 2.0))
    adapter = tmp_path / "new_head" / "checkpoint" / "adapter" / "adapter_model.safetensors"
    assert adapter.read_bytes() == bytes([2])
    assert not (tmp_path / "new_head" / "checkpoint" / MARKER).exists()

    # Epoch 3 again replaces the half-upload whole.
    _save(tmp_path / "new_head" / "checkpoint", 3, storage)
    assert storage.epoch_folders() == {2: True, 3: True}
    epoch, _, state = load_checkpoint(tmp_path / "third_head" / "checkpoint", storage)
    assert epoch == 3 and torch.equal(state["weights"]["w"], torch.full((3,), 3.0))


def test_a_local_checkpoint_newer_than_storage_is_kept_and_uploaded(storage_uri, tmp_path):
    storage = RunStorage(storage_uri, "run")
    _save(tmp_path / "checkpoint", 0, storage)
    _save(tmp_path / "checkpoint", 1, None)  # its upload failed
    epoch, _, _ = load_checkpoint(tmp_path / "checkpoint", storage)
    assert epoch == 1 and storage.newest_epoch() == 1


def test_a_failed_upload_raises_naming_the_storage_after_the_local_checkpoint_is_written(
    s3_endpoint, tmp_path
):
    uri = f"s3://no-such-bucket/runs{s3_endpoint}"
    with pytest.raises(OSError, match=re.escape(f"storage={uri!r}: uploading epoch 0 failed")):
        _save(tmp_path / "checkpoint", 0, RunStorage(uri, "run"))
    assert load_checkpoint(tmp_path / "checkpoint")[0] == 0


def test_a_missing_bucket_stops_the_job_before_anything_starts(s3_endpoint, tmp_path):
    check_reachable(f"s3://rlft/runs{s3_endpoint}")  # the bucket is there; the prefix is made on upload
    uri = f"s3://no-such-bucket/runs{s3_endpoint}"
    with pytest.raises(ValueError, match=re.escape(f"storage={uri!r}: the bucket 'no-such-bucket' does not")):
        check_reachable(uri)
    runs, mlflow_db = tmp_path / "runs", tmp_path / "mlflow.db"
    env = os.environ | AWS_ENV | {"MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}"}
    command = [sys.executable, "jobs/d3po.py", "--storage", uri, "--runs-dir", str(runs)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "error: storage=" in done.stderr and "Traceback" not in done.stderr
    assert not runs.exists() and not mlflow_db.exists()  # no run folder, no MLflow run, no Ray


@pytest.mark.parametrize(
    "value, message",
    [
        ("ftp://host/runs", "unknown scheme 'ftp'"),
        ("s3://", "s3:// needs a bucket"),
        ("s3:///runs", "s3:// needs a bucket"),
        ("file://runs", "file:// needs an absolute path"),
        ("", "empty"),
        (" s3://bucket/runs", "padded with spaces"),
        ("s3://YOUR-BUCKET/rlft-runs", "YOUR-BUCKET is cluster.yaml's placeholder"),
    ],
)
def test_a_bad_storage_value_is_named_before_anything_starts(value, message):
    with pytest.raises(ValueError, match=f"storage={re.escape(repr(value))} is not allowed: {message}"):
        D3POConfig(storage=value)


@pytest.mark.parametrize("value", ["s3://bucket/runs", "gs://bucket", "/mnt/shared/runs", "shared/runs"])
def test_good_storage_values_pass(value):
    assert DRaFTConfig(storage=value).storage == value


def test_storage_defaults_to_rlft_storage(monkeypatch):
    monkeypatch.setenv("RLFT_STORAGE", "s3://bucket/rlft-runs")
    assert D3POConfig().storage == "s3://bucket/rlft-runs"
    assert D3POConfig(storage=None).storage is None
    monkeypatch.setenv("RLFT_STORAGE", "ftp://host/runs")
    with pytest.raises(ValueError, match="storage='ftp://host/runs' is not allowed"):
        D3POConfig()
    monkeypatch.delenv("RLFT_STORAGE")
    assert D3POConfig().storage is None


SMALL = dict(eval_images=4, pairs_per_epoch=2, num_steps=3, batch_size=3, threads=1)
FLAGS = ["--pairs-per-epoch", "2", "--num-steps", "3", "--batch-size", "3", "--threads", "1", *SMALL_EVAL]


def _numbers(output: str) -> list[str]:
    """Each epoch's line up to its timings: 'epoch   2 | reward ... | loss ... | acc ... | grad ...'."""
    return re.findall(r"^(epoch +\d+ \|.*?\| grad [^|]*)\|", output, flags=re.M)


@pytest.mark.slow
def test_a_run_whose_disk_was_lost_resumes_from_s3_with_the_numbers_of_an_uninterrupted_run(
    s3_endpoint, tmp_path, capsys
):
    uri = f"s3://rlft/e2e{s3_endpoint}"
    runs = tmp_path / "runs"
    command = [sys.executable, "jobs/d3po.py", "--no-ray", "--no-track", *FLAGS, "--runs-dir", str(runs)]
    command += ["--run-name", "lost-disk", "--storage", uri]
    env = os.environ | AWS_ENV

    def job(epochs: int) -> str:
        args = [*command, "--epochs", str(epochs)]
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    first = job(2)
    shutil.rmtree(runs)  # the head node's disk is lost
    second = job(3)
    assert f"resuming {runs / 'lost-disk'} after epoch 1" in second

    train_local(D3POConfig(epochs=3, **SMALL), tmp_path / "straight")
    straight = _numbers(capsys.readouterr().out)
    assert len(straight) == 3 and _numbers(first) + _numbers(second) == straight
    storage = RunStorage(uri, "lost-disk")
    assert storage.epoch_folders() == {1: True, 2: True}
    adapter = storage.fs.get_file_info(pafs.FileSelector(f"{storage.root}/adapter"))
    local = sorted(p.name for p in (runs / "lost-disk" / "adapter").iterdir())
    assert sorted(info.base_name for info in adapter) == local
