import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from test_feedback_learns import label_over_http as label_by_rule

from rlft.diffusion.policy import ADAPTER_FILE
from rlft.distributed.cluster import start_ray
from rlft.feedback.batch_folder import read_manifest
from rlft.feedback.labels import Label, connect, save_label
from rlft.feedback.labels_config import D3POLabelsConfig
from rlft.feedback.sample_groups import SampleGroupsConfig, sample_groups
from rlft.runs.tracking import Tracker
from rlft.training import train_labels, train_on_labels
from rlft.world.tiny_model import build_tiny_pipeline

ROOT = Path(__file__).resolve().parents[2]
SAMPLING = dict(groups=4, group_size=2, num_steps=3)


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    """Round 0, sampled and labelled once for every test here (training reads it and writes elsewhere)."""
    batch = sample_groups(
        SampleGroupsConfig(out=str(tmp_path_factory.mktemp("round0")), **SAMPLING), log=print
    )
    assert label_over_http(batch, "ann") == 4
    return batch


def label_over_http(folder, annotator: str) -> int:
    """A person who prefers the brighter image of each group, labelling through the page's API."""
    return label_by_rule(folder, annotator, lambda image, prompt: image.mean().item())


@pytest.mark.slow
def test_a_full_round_sample_label_train_then_sample_from_the_new_adapter(first, tmp_path):
    runs = str(tmp_path / "runs")
    shared = str(tmp_path / "shared")  # storage every node shares: the adapter goes there too
    train = D3POLabelsConfig(
        batch=str(first), epochs=2, batch_size=4, runs_dir=runs, run_name="r0", storage=shared, ray=False
    )
    lines = []
    adapter = train_on_labels(train, log=lines.append)
    assert lines[0].startswith("4 pairs (0 ties) from 1 annotator(s)")
    # One line per epoch (a pass over the 4 pairs x 3 steps), with no reward: nothing was sampled. (Whether
    # the loss falls is not asserted: on 4 pairs of the random tiny model it moves by about 1e-3 per pass,
    # within its noise; see docs/learning.md.)
    assert [line.split("|")[0].strip() for line in lines[1:]] == ["epoch   0", "epoch   1"]
    assert "reward" not in lines[1] and "loss" in lines[1] and "acc" in lines[1]
    assert adapter == tmp_path / "runs" / "r0" / "adapter" and (adapter / ADAPTER_FILE).is_file()
    uploaded = tmp_path / "shared" / "r0" / "adapter" / ADAPTER_FILE
    assert uploaded.read_bytes() == (adapter / ADAPTER_FILE).read_bytes()
    # The result is diffusers' LoRA format: a stock pipeline loads it.
    build_tiny_pipeline(0).load_lora_weights(str(adapter))

    cfg = SampleGroupsConfig(out=str(tmp_path / "round1"), adapter=str(adapter), round=1, **SAMPLING)
    second = sample_groups(cfg, log=print)
    base = sample_groups(SampleGroupsConfig(out=str(tmp_path / "base1"), round=1, **SAMPLING), log=print)
    tuned_latents, base_latents = (
        load_file(f / "trajectories.safetensors")["latents"] for f in (second, base)
    )
    assert (tuned_latents[:, -1] - base_latents[:, -1]).abs().mean() > 1e-4  # the adapter took effect
    assert read_manifest(second)[0]["adapter"] == str(adapter.resolve())

    # The next round's training starts from the adapter its batch was sampled from: with a learning rate
    # near zero the new adapter is the old one.
    manifest, sha = read_manifest(second)
    conn = connect(second)
    save_label(conn, Label("ann", 0, best="g0000-0", worst="g0000-1"), sha)
    conn.close()
    still = D3POLabelsConfig(batch=str(second), epochs=1, lr=1e-12, runs_dir=runs, run_name="r1", ray=False)
    assert still.lora_rank == 4 and still.num_steps == 3  # the adapter's shape and the batch's steps
    again = train_on_labels(still)
    assert_same_adapter(adapter, again)


@pytest.mark.slow
def test_the_labels_job_trains_on_a_labelled_batch_and_logs_what_it_trained(first, tmp_path):
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    flags = ["--batch", str(first), "--epochs", "2", "--batch-size", "4"]  # on Ray: one train worker
    flags += ["--runs-dir", str(tmp_path / "runs"), "--run-name", "h0", "--threads", "2"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "d3po_labels.py"), *flags],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"D3PO on people's labels | model tiny | batch {first} | 2 epochs")
    assert lines[0].endswith("Ray: 1 train worker(s)")
    assert [line.split("|")[0].strip() for line in lines if line.startswith("epoch")] == [
        "epoch   0",
        "epoch   1",
    ]
    assert "4 pairs (0 ties)" in result.stdout and "nan" not in result.stdout.lower()
    summary = next(line for line in lines if line.startswith("labels:"))
    assert "4 pairs" in summary and "accuracy" in summary
    assert (tmp_path / "runs" / "h0" / "adapter" / ADAPTER_FILE).is_file()
    run_id = next(line for line in lines if line.startswith("MLflow run")).split()[2]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1]
    assert not client.get_metric_history(run_id, "reward_mean")
    # MLflow holds what was trained: the batch's steps, the LoRA shape, and no reward or sampling fields.
    params = client.get_run(run_id).data.params
    assert (params["batch"], params["num_steps"], params["lora_rank"], params["epochs"]) == (
        str(first),
        "3",
        "4",
        "2",
    )
    assert not {"reward", "prompts", "samplers", "eval_images", "pairs_per_epoch"} & params.keys()
    assert client.get_run(run_id).data.tags["algorithm"] == "d3po-labels"


@pytest.mark.slow
def test_on_ray_labels_train_as_in_one_process_a_run_resumes_and_the_start_adapter_is_continued(
    first, tmp_path
):
    same = dict(batch=str(first), batch_size=4, shuffle=False, threads=1)
    single = train_labels(D3POLabelsConfig(epochs=2, ray=False, **same), tmp_path / "single", log=print)
    start_ray(D3POLabelsConfig(**same))  # asks for one train worker, no sampler or scorer
    try:
        run, uri = tmp_path / "ray", f"sqlite:///{tmp_path / 'mlflow.db'}"
        with Tracker("ray", same, {}, uri=uri) as tracker:  # stopped after epoch 0 ...
            train_labels(D3POLabelsConfig(epochs=1, **same), run, tracker, log=print)
        lines = []
        with Tracker("ray", same, {}, uri=uri) as tracker:  # ... and started again
            resumed = train_labels(D3POLabelsConfig(epochs=2, **same), run, tracker, log=lines.append)
        assert f"resuming {run} after epoch 0" in lines
        history = MlflowClient(uri).get_metric_history(tracker.run_id, "loss")
        assert [m.step for m in history] == [0, 1]  # each pass logged once
        assert len(resumed) == 2
        for epoch, (a, b) in enumerate(zip(single, resumed, strict=True)):
            for key in ("loss", "preference_accuracy", "grad_norm"):
                assert math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-7), (epoch, key, a[key], b[key])
        adapter = run / "adapter"
        assert_same_adapter(tmp_path / "single" / "adapter", adapter)

        # The next round, sampled from the Ray run's adapter, continues it on the workers: with a learning
        # rate near zero the adapter comes out as it went in.
        cfg = SampleGroupsConfig(out=str(tmp_path / "round1"), adapter=str(adapter), round=1, **SAMPLING)
        second = sample_groups(cfg, log=print)
        manifest, sha = read_manifest(second)
        conn = connect(second)
        save_label(conn, Label("ann", 0, best="g0000-0", worst="g0000-1"), sha)
        conn.close()
        again = D3POLabelsConfig(epochs=1, lr=1e-12, **same | {"batch": str(second)})
        train_labels(again, tmp_path / "ray1", log=print)
        assert_same_adapter(adapter, tmp_path / "ray1" / "adapter")
    finally:
        ray.shutdown()


def assert_same_adapter(a: Path, b: Path) -> None:
    old, new = load_file(a / ADAPTER_FILE), load_file(b / ADAPTER_FILE)
    assert old.keys() == new.keys()
    assert all(torch.allclose(old[k], new[k], atol=1e-6) for k in old)
    assert any(old[k].abs().max() > 0 for k in old if "up" in k)  # trained, not the zero init
