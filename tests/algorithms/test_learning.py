"""Whole training loops on the pretrained tiny model, judged on the fixed evaluation set (the same prompts and
noise at every evaluation) against a reversed control, one seed each (slow tier, minutes each; more seeds:
benchmarks/science/learning.py)."""

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

from rlft.configs import D3POConfig, DDPOConfig, DRaFTConfig
from rlft.local import train_local
from rlft.zoo.loading import load_pipeline

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


# One seed each, with its reversed twin: the slow tier holds every default to learning (the test run's budget
# is 35 minutes on 2 cores). How far each learns over several seeds is measured by
# `python benchmarks/science/learning.py --seeds 0 1 2 ...` and kept, dated, in docs/learning.md.
SEED = 0


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


def test_d3po_default_learns_the_reward_on_the_evaluation_set_and_its_reversed_control_does_not(tmp_path):
    """docs/learning.md, "D3PO's default over six seeds": +0.119 +- 0.020 across seeds 0-5."""
    cfg = D3POConfig(seed=SEED, ray=False, track=False)
    _check_learns(cfg, tmp_path)


def test_draft_default_learns_the_reward_on_the_evaluation_set_and_its_reversed_control_does_not(tmp_path):
    """docs/learning.md, the same section: DRaFT-K's default on seeds 0 and 1."""
    _check_learns(DRaFTConfig(seed=SEED, ray=False, track=False), tmp_path)


def test_draft_lv_raises_the_differentiable_reward(tmp_path):
    cfg = DRaFTConfig(variant="draft-lv", ray=False, track=False)
    history = train_local(dataclasses.replace(cfg, eval_every=cfg.epochs), tmp_path, log=print)
    gain, se = _gain(history)
    assert gain > 3 * se, (gain, se)


# DDPO learns on the shipped model with shared initial noise, advantages within each group (Flow-GRPO's),
# D3PO's learning rate and batch, and 20 epochs, judged on 128 evaluation images for its small gain
# (docs/learning.md, "DDPO, the baseline, on the same budget": JPEG compressibility, seeds 0 and 1 of four).
DDPO_LEARNS = dict(
    reward="jpeg-compressibility",
    shared_noise=True,
    advantages="group",
    lr=6e-3,
    batch_size=16,
    epochs=20,
    eval_images=128,
)


def test_ddpo_with_shared_noise_and_group_advantages_learns_jpeg_and_its_reversed_control_does_not(
    tmp_path,
):
    _check_learns(DDPOConfig(seed=SEED, ray=False, track=False, **DDPO_LEARNS), tmp_path)


# The newer families, tiny and random: their images are noise, so the reward is brightness, which has range
# on noise (the measured gains: docs/models.md, "Model families").
FAMILY_RUNS = [
    ("tiny-sdxl", "d3po"),
    ("tiny-sdxl", "draft-k"),
    ("tiny-sdxl", "draft-lv"),
    ("tiny-sd3", "d3po"),
    ("tiny-sd3", "draft-k"),
    ("tiny-sd3", "draft-lv"),
]


@pytest.mark.parametrize("model, method", FAMILY_RUNS)
def test_each_family_learns_brightness_with_d3po_and_draft_and_its_reversed_control_does_not(
    model, method, tmp_path
):
    common = dict(model=model, reward="brightness", seed=0, ray=False, track=False)
    if method == "d3po":
        cfg = D3POConfig(epochs=4, **common)
    else:
        cfg = DRaFTConfig(epochs=2, variant=method, **common)
    _check_learns(cfg, tmp_path)


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
