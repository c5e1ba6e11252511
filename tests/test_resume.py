"""Checkpoints and MLflow tracking: a run started again goes on where it stopped and logs nothing twice."""

import math
import sys
from dataclasses import replace

import pytest
import torch
from mlflow.tracking import MlflowClient

from rlft.algorithms.d3po import D3POLearner
from rlft.configs import D3POConfig, DRaFTConfig
from rlft.diffusion.policy import LocalTrained, Policy
from rlft.job import run_job
from rlft.local import train_local
from rlft.loop import TrainingDiverged
from rlft.rewards.registry import REWARDS
from rlft.runs.checkpoint import OtherRun, load_checkpoint, save_checkpoint
from rlft.runs.tracking import Tracker, check_tracking_uri

SMALL = dict(eval_images=4, pairs_per_epoch=2, num_steps=3, batch_size=3, threads=1)
SMALL_DRAFT = dict(eval_images=4, batch_size=2, steps_per_epoch=1, num_steps=3, threads=1)


def _tracker(tmp_path, name="run"):
    return Tracker(name, D3POConfig(), {"algorithm": "d3po"}, uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_a_resumed_run_equals_an_uninterrupted_one_and_logs_each_epoch_once(tmp_path):
    straight = train_local(D3POConfig(epochs=3, **SMALL), tmp_path / "straight", log=print)

    with _tracker(tmp_path) as tracker:
        train_local(D3POConfig(epochs=2, **SMALL), tmp_path / "resumed", tracker, log=print)
    lines = []
    with _tracker(tmp_path) as tracker:  # the same name: the same MLflow run
        assert tracker.resumed
        resumed = train_local(D3POConfig(epochs=3, **SMALL), tmp_path / "resumed", tracker, log=lines.append)
    # The base model is scored on the evaluation set first (again on resume), then one epoch, then the grid
    # (progress lines, indented, come only from an epoch slower than 30 s).
    lines = [line for line in lines if not line.startswith("  ")]
    assert lines[0].startswith("evaluation set: 4 images of 'shapes-eval' | base model reward")
    assert lines[1] == f"resuming {tmp_path / 'resumed'} after epoch 1" and lines[2].startswith("epoch   2 |")
    assert len(lines) == 4 and lines[3].startswith("before/after grid")

    for a, b in zip(straight, resumed, strict=True):
        assert a["reward_mean"] == b["reward_mean"] and a["loss"] == b["loss"]
        assert a["eval_gain_mean"] == b["eval_gain_mean"]  # the same evaluation, resumed or not
    client = MlflowClient(tracker.uri)
    assert [m.step for m in client.get_metric_history(tracker.run_id, "reward_mean")] == [0, 1, 2]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(tracker.run_id).info.experiment_id])) == 1


def test_a_bfloat16_run_trains_in_the_whole_loop_and_resumes_to_the_same_numbers(tmp_path):
    cfg = D3POConfig(epochs=2, dtype="bfloat16", **SMALL)
    straight = train_local(cfg, tmp_path / "straight", log=print)
    train_local(replace(cfg, epochs=1), tmp_path / "resumed", log=print)
    resumed = train_local(cfg, tmp_path / "resumed", log=print)
    for a, b in zip(straight, resumed, strict=True):
        assert math.isfinite(a["loss"]) and math.isfinite(a["eval_gain_mean"]) and a["grad_norm"] > 0
        assert a["loss"] == b["loss"] and a["eval_gain_mean"] == b["eval_gain_mean"]
    weights = load_checkpoint(tmp_path / "resumed" / "checkpoint", None, print)[2]["weights"]
    assert {w.dtype for w in weights.values()} == {torch.float32}  # the LoRA trains in float32


def test_draft_resumes_too(tmp_path):
    small = dict(batch_size=2, steps_per_epoch=1, num_steps=3, threads=1)
    straight = train_local(DRaFTConfig(epochs=2, **small), tmp_path / "a", log=print)
    train_local(DRaFTConfig(epochs=1, **small), tmp_path / "b", log=print)
    resumed = train_local(DRaFTConfig(epochs=2, **small), tmp_path / "b", log=print)
    assert [h["reward_mean"] for h in straight] == [h["reward_mean"] for h in resumed]


def test_epochs_checkpointed_but_never_logged_are_logged_on_resume(tmp_path, tiny_pipe):
    policy = Policy(tiny_pipe.unet)
    optimizer = torch.optim.AdamW(policy.parameters())
    history = [  # as run_epochs records them: every epoch has its epoch_time_s
        {"reward_mean": -1.5, "loss": 0.69, "epoch_time_s": 3.0},
        {"reward_mean": -1.4, "loss": 0.68, "epoch_time_s": 3.1},
    ]
    save_checkpoint(
        tmp_path / "run" / "checkpoint",
        epoch=1,
        history=history,
        state={"weights": policy.state_dict(), "optimizer": optimizer.state_dict()},
        adapter=policy.adapter_files(),
    )
    # A crash right after the checkpoint: epoch 1 never reached MLflow. Resuming logs it, then goes on.
    with _tracker(tmp_path) as tracker:
        tracker.log_epoch(0, history[0])
        train_local(D3POConfig(epochs=2, **SMALL), tmp_path / "run", tracker, log=print)
    assert tracker.logged_epochs() == [0, 1]


def test_a_sample_whose_reward_is_nan_is_dropped_and_counted_and_the_epoch_goes_on(tmp_path, monkeypatch):
    jpeg = REWARDS["jpeg-compressibility"]

    def first_is_nan(images, prompts=None):
        rewards = jpeg.fn(images)
        rewards[0] = float("nan")
        return rewards

    monkeypatch.setitem(REWARDS, "jpeg-compressibility", replace(jpeg, fn=first_is_nan))
    (metrics,) = train_local(D3POConfig(epochs=1, group_size=2, **SMALL), tmp_path, log=print)
    assert metrics["nan_rewards"] == 1 and math.isfinite(metrics["reward_mean"])
    assert math.isfinite(metrics["loss"]) and metrics["pairs"] == 1  # of 2 groups of 2, one lost its pair


def test_resuming_under_the_same_name_with_another_defining_setting_is_refused_before_training(tmp_path):
    train_local(D3POConfig(epochs=1, **SMALL), tmp_path, log=print)
    before = (tmp_path / "checkpoint" / "state.pt").read_bytes()
    with pytest.raises(OtherRun, match=r"lr was 0.006, now 0.5"):
        train_local(D3POConfig(epochs=2, lr=0.5, **SMALL), tmp_path, log=print)
    with pytest.raises(OtherRun, match=r"algorithm was 'd3po', now 'draft'"):
        train_local(DRaFTConfig(epochs=2, **SMALL_DRAFT), tmp_path, log=print)
    assert (tmp_path / "checkpoint" / "state.pt").read_bytes() == before


def test_a_job_resuming_another_run_is_refused_before_ray_or_mlflow_start(tmp_path, monkeypatch):
    train_local(D3POConfig(epochs=1, **SMALL), tmp_path / "runs" / "r", log=print)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    flags = ["--run-name", "r", "--runs-dir", str(tmp_path / "runs"), "--lora-rank", "8"]
    monkeypatch.setattr(sys, "argv", ["d3po.py", *flags])
    with pytest.raises(SystemExit) as exited:
        run_job(D3POConfig, "d3po", "")
    assert "lora_rank was 4, now 8" in str(exited.value.code)
    assert not (tmp_path / "mlflow.db").exists()


def test_a_non_finite_loss_stops_the_run_before_that_epoch_is_saved(tmp_path, monkeypatch):
    train_local(D3POConfig(epochs=1, **SMALL), tmp_path, log=print)  # a finished run: checkpoint, adapter
    adapter = {f.name: f.read_bytes() for f in (tmp_path / "adapter").iterdir()}
    step = D3POLearner.step

    def diverging(self, batch, embeds, uncond, **options):  # what a too-large learning rate ends in
        metrics = step(self, batch, embeds, uncond, **options)
        for parameter in self.policy.parameters():
            parameter.data.fill_(float("nan"))
        return metrics | {"loss": float("nan")}

    monkeypatch.setattr(D3POLearner, "step", diverging)
    with pytest.raises(TrainingDiverged, match=r"epoch 1: loss = nan.*the checkpoint of epoch 0 is kept"):
        train_local(D3POConfig(epochs=2, **SMALL), tmp_path, log=print)  # continued: epoch 1 diverges
    last, history, state = load_checkpoint(tmp_path / "checkpoint")
    assert last == 0 and len(history) == 1
    assert all(torch.isfinite(w).all() for w in state["weights"].values())
    assert {f.name: f.read_bytes() for f in (tmp_path / "adapter").iterdir()} == adapter


def test_a_failed_run_ends_failed_with_its_error(tmp_path):
    with pytest.raises(RuntimeError), _tracker(tmp_path) as tracker:
        raise RuntimeError("sampler died")
    run = MlflowClient(tracker.uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: sampler died"


def test_checkpoint_restores_weights_and_optimizer_and_holds_a_loadable_adapter(tmp_path, tiny_pipe):
    policy = Policy(tiny_pipe.unet)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.1)
    sum(p.sum() for p in policy.parameters()).backward()
    optimizer.step()
    state = {"weights": policy.state_dict(), "optimizer": optimizer.state_dict()}
    save_checkpoint(tmp_path / "c", epoch=4, history=[{}] * 5, state=state, adapter=policy.adapter_files())

    epoch, history, loaded = load_checkpoint(tmp_path / "c")
    fresh = Policy(type(tiny_pipe.unet).from_config(tiny_pipe.unet.config))
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    LocalTrained(fresh, fresh_optimizer).load(loaded)
    assert epoch == 4 and len(history) == 5
    for a, b in zip(policy.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1
    # The adapter in the checkpoint is the trained one, in the format a stock pipeline loads.
    tiny_pipe.unet.delete_adapters("default")
    tiny_pipe.load_lora_weights(tmp_path / "c" / "adapter", adapter_name="loaded")
    loaded_lora = {k: v for k, v in tiny_pipe.unet.state_dict().items() if "lora_B.loaded" in k}
    assert any(v.abs().sum() > 0 for v in loaded_lora.values())


@pytest.mark.parametrize(
    "uri, message",
    [
        ("http://127.0.0.1:9", "is unreachable"),
        ("file:///tmp/mlruns", "file stores are refused"),
        ("mlruns", "file stores are refused"),
        ("sqlite:////no/such/folder/mlflow.db", "is missing or not writable"),
    ],
)
def test_bad_tracking_uris_are_named(uri, message):
    with pytest.raises(ValueError, match=message):
        check_tracking_uri(uri, timeout_s=2)
