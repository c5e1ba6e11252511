"""Pipelined epochs (`--pipeline`): epoch e+1 samples with the weights epoch e trains from, in one process as
on Ray; a resumed pipelined run gives the numbers of an uninterrupted one."""

import dataclasses

import pytest
import torch
from mlflow.tracking import MlflowClient

from rlft.algorithms.registry import algorithm_of
from rlft.configs import D3POConfig, DDPOConfig, DRaFTConfig
from rlft.configs.base import RunConfig
from rlft.diffusion.policy import build_policy
from rlft.epoch import epoch_prompts
from rlft.job import open_tracker
from rlft.local import LocalBackend, train_local

COMMON = dict(eval_images=4, num_steps=3, batch_size=3, threads=1, ray=False)
SMALL = dict(pairs_per_epoch=2, **COMMON)


def test_off_by_default_and_auto_pipelines_only_where_samplers_and_workers_have_gpus_of_their_own():
    assert not D3POConfig(sampler_gpus=1, worker_gpus=1).pipelined()  # the default: off
    auto = dict(pipeline="auto", sampler_gpus=1, worker_gpus=1)
    assert not D3POConfig(pipeline="auto").pipelined()  # CPU actors share the cores
    assert D3POConfig(**auto).pipelined() and DDPOConfig(**auto).pipelined()
    assert not D3POConfig(**auto | dict(sampler_gpus=0.5)).pipelined()  # a shared GPU
    assert not D3POConfig(**auto, ray=False).pipelined()
    assert not DRaFTConfig(**auto).pipelined()  # its learner finishes its samples
    assert D3POConfig(pipeline="on", ray=False).pipelined()
    assert not RunConfig().pipelined()  # a run on people's labels samples nothing (its Ray workers ask)


def test_bad_pipeline_values_are_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"^pipeline='sometimes' is not allowed: 'auto', 'on' or 'off'"):
        D3POConfig(pipeline="sometimes")
    with pytest.raises(ValueError, match=r"^pipeline='on' is not allowed: 'auto' or 'off' for draft"):
        DRaFTConfig(pipeline="on")


def test_a_pipelined_run_is_another_run_and_an_unpipelined_one_records_no_new_setting():
    settings = D3POConfig().defining_settings()
    assert "pipeline" not in settings and "pipelined" not in settings  # old checkpoints still resume
    assert D3POConfig(pipeline="off").defining_settings() == settings
    assert D3POConfig(pipeline="on").defining_settings() == settings | {"pipelined": True}


def test_each_epoch_after_the_first_samples_with_the_weights_of_two_epochs_before(tmp_path):
    cfg = D3POConfig(epochs=3, **SMALL)
    lines = []
    pipelined = train_local(dataclasses.replace(cfg, pipeline="on"), tmp_path / "p", log=lines.append)
    plain = train_local(cfg, tmp_path / "plain", log=print)

    assert pipelined[0]["reward_mean"] == plain[0]["reward_mean"] and pipelined[0]["loss"] == plain[0]["loss"]
    assert [h["sample_staleness"] for h in pipelined] == [0.0, 1.0, 1.0]
    assert "sample_staleness" not in plain[0]
    assert "sampled 1 epoch behind" in lines[2] and "behind" not in lines[1]  # lines[0]: the base model

    # Epoch 1 sampled with the base weights: the base model's own samples of epoch 1's prompts and noise.
    pipe, policy = build_policy(cfg)
    algorithm = algorithm_of(cfg)
    base = LocalBackend(cfg, pipe, algorithm.make_learner(cfg, pipe, policy), algorithm.train)
    rewards = base.sample(1, epoch_prompts(cfg, 1)).rewards
    assert pipelined[1]["reward_mean"] == rewards.mean().item()
    assert (
        plain[1]["reward_mean"] != pipelined[1]["reward_mean"]
    )  # the unpipelined epoch 1 had trained weights


@pytest.mark.parametrize(
    "config", [D3POConfig(**SMALL), DDPOConfig(prompts_per_epoch=2, samples_per_prompt=2, **COMMON)]
)
def test_a_resumed_pipelined_run_equals_an_uninterrupted_one(config, tmp_path):
    cfg = dataclasses.replace(config, pipeline="on")
    straight = train_local(dataclasses.replace(cfg, epochs=3), tmp_path / "straight", log=print)
    train_local(dataclasses.replace(cfg, epochs=2), tmp_path / "resumed", log=print)  # stops after epoch 1
    resumed = train_local(dataclasses.replace(cfg, epochs=3), tmp_path / "resumed", log=print)
    for key in ("reward_mean", "loss", "eval_gain_mean", "sample_staleness"):
        assert [h[key] for h in straight] == [h[key] for h in resumed], key
    state = torch.load(tmp_path / "resumed" / "checkpoint" / "state.pt", weights_only=False)
    assert set(state["sampling_weights"]) == set(state["weights"])  # the next epoch's sampling weights


def test_mlflow_keeps_the_pipeline_flag_and_what_auto_resolved_to(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = D3POConfig(pipeline="auto", sampler_gpus=1, worker_gpus=1)
    with open_tracker(cfg, "d3po", tmp_path / "run") as tracker:
        pass
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.data.params["pipeline"] == "auto" and run.data.tags["pipelined"] == "True"
