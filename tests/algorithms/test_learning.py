"""Whole training loops on the pretrained tiny model, judged on the fixed evaluation set (the same prompts and
noise at every evaluation) against a reversed control, over three seeds (slow tier, several minutes each)."""

import dataclasses
import math
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from processes import SMALL_EVAL

from rlft.configs import D3POConfig, DRaFTConfig
from rlft.diffusion.models import load_pipeline
from rlft.local import train_local

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


SEEDS = (0, 1, 2)
DRAFT_SEEDS = (0, 1, 2)


def _gain(history: list[dict]) -> tuple[float, float]:
    """The last evaluation's paired gain over the base model on the fixed evaluation set, and its SE."""
    return history[-1]["eval_gain_mean"], history[-1]["eval_gain_se"]


def _train(cfg, run_dir: Path) -> list[dict]:
    return train_local(cfg, run_dir, log=print)


def _check_learns(cfg, tmp_path):
    """The run raises the fixed evaluation set's reward by 3 standard errors of the paired gain,
    and its reversed twin (every preference swapped, or the reward descended) ends 3 standard errors below it.

    The two runs are scored on the same images; the standard error of their difference is taken as if the
    two gains were independent, which overstates it (both are paired against the same base images). They
    run side by side in two processes of one thread each, and only the base model and the last epoch are
    evaluated: the evaluation draws on noise of its own, so the training is the same as with an evaluation
    every epoch, and the same as in one process."""
    cfg = dataclasses.replace(cfg, eval_every=cfg.epochs, threads=1)
    reversed_cfg = dataclasses.replace(cfg, reverse_preferences=True)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = [
            pool.submit(_train, cfg, tmp_path / "forward"),
            pool.submit(_train, reversed_cfg, tmp_path / "reverse"),
        ]
        forward, reverse = (run.result() for run in runs)
    gain, se = _gain(forward)
    assert gain > 3 * se, (gain, se)
    reverse_gain, reverse_se = _gain(reverse)
    assert gain - reverse_gain > 3 * math.hypot(se, reverse_se), (gain, se, reverse_gain, reverse_se)


# Measured (`python benchmarks/learning.py`, one process, November 2026), best-worst pairs of groups of 4,
# 64 evaluation images: seed 0 +0.054 +- 0.009 kB (reversed -0.096), seed 1 +0.303 +- 0.014 (reversed -0.094),
# seed 2 +0.294 +- 0.014 (reversed -0.132). DRaFT-K, 4 epochs, 32 images: seed 0 +0.82 +- 0.08 (reversed
# -1.59), seed 1 +0.76 +- 0.08 (-1.54), seed 2 +0.73 +- 0.08 (-1.61).


@pytest.mark.parametrize("seed", SEEDS)
def test_d3po_default_learns_the_reward_on_the_evaluation_set_and_its_reversed_control_does_not(
    seed, tmp_path
):
    cfg = D3POConfig(seed=seed, ray=False, track=False)
    _check_learns(cfg, tmp_path)


@pytest.mark.parametrize("seed", DRAFT_SEEDS)
def test_draft_default_learns_the_reward_on_the_evaluation_set_and_its_reversed_control_does_not(
    seed, tmp_path
):
    _check_learns(DRaFTConfig(seed=seed, ray=False, track=False), tmp_path)


def test_draft_lv_raises_the_differentiable_reward(tmp_path):
    cfg = DRaFTConfig(variant="draft-lv", ray=False, track=False)
    history = train_local(dataclasses.replace(cfg, eval_every=cfg.epochs), tmp_path, log=print)
    gain, se = _gain(history)
    assert gain > 3 * se, (gain, se)


def test_d3po_job_tracks_its_run_and_its_adapter_loads_into_a_stock_pipeline(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        sys.executable,
        str(ROOT / "jobs" / "d3po.py"),
        "--epochs",
        "2",
        "--pairs-per-epoch",
        "4",
        "--runs-dir",
        str(tmp_path),
        "--run-name",
        "job",
        *SMALL_EVAL,
    ]
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "tests"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert "epoch   1 | eval" in result.stdout and "adapter in" in result.stdout
    grid = tmp_path / "job" / "before_after.png"
    assert f"before/after grid: {grid}" in result.stdout and grid.is_file()

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "job"
    assert run.data.tags["algorithm"] == "d3po" and run.data.params["reward"] == "jpeg-compressibility"
    for key in ("reward_mean", "reward_std", "loss", "samples_per_s", "epoch_time_s", "preference_accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    for key in ("eval_reward_mean", "eval_reward_se", "eval_gain_mean", "eval_gain_se", "reward_margin"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    assert "before_after.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    assert "images/epoch_0000.png" in artifacts and "images/epoch_0001.png" in artifacts
    assert client.list_artifacts(run.info.run_id, "adapter")[0].path.endswith(".safetensors")

    out = tmp_path / "job" / "adapter"
    stock = load_pipeline("tiny")
    prompt = "a small red circle on a plain blue background"

    def sample():
        generator = torch.Generator().manual_seed(0)
        return stock(prompt, num_inference_steps=4, output_type="pt", generator=generator).images

    before = sample()
    stock.load_lora_weights(out)
    after = sample()
    assert (after - before).abs().max() > 0  # one epoch of training changed the model
