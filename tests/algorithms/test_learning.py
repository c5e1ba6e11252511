"""Whole training loops on the pretrained tiny model, judged on the fixed evaluation set (the same prompts and
noise at every evaluation) against a reversed control, one seed each (slow tier, minutes each; more seeds:
benchmarks/science/learning.py)."""

import dataclasses
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from rlft.configs import D3POConfig, DDPOConfig, DRaFTConfig
from rlft.local import train_local

pytestmark = pytest.mark.slow


# One seed each, with its reversed twin: the slow tier holds every default to learning (the test run's budget
# is 35 minutes on 2 cores). How far each learns over several seeds is measured by
# `python benchmarks/science/learning.py --seeds 0 1 2 ...` and kept, dated, in docs/learning.md.
SEED = 0


def _gain(history: list[dict]) -> tuple[float, float]:
    """The last evaluation's paired gain over the base model on the fixed evaluation set, and its SE."""
    return history[-1]["eval_gain_mean"], history[-1]["eval_gain_se"]


def _train(cfg, run_dir: Path) -> list[dict]:
    return train_local(cfg, run_dir, log=print)


def _one_thread_evaluated_once(cfg):
    """One thread, and only the base model and the last epoch evaluated: the evaluation draws on noise of its
    own, so the training is the same as with an evaluation every epoch, and the same as in one process."""
    return dataclasses.replace(cfg, eval_every=cfg.epochs, threads=1)


def _check_gains(forward: list[dict], reverse: list[dict]) -> None:
    """The run raises the fixed evaluation set's reward by 3 standard errors of the paired gain, and its
    reversed twin (every preference swapped, or the reward descended) ends 3 standard errors below it.

    The two runs are scored on the same images; the standard error of their difference is taken as if the
    two gains were independent, which overstates it (both are paired against the same base images)."""
    gain, se = _gain(forward)
    assert gain > 3 * se, (gain, se)
    reverse_gain, reverse_se = _gain(reverse)
    assert gain - reverse_gain > 3 * math.hypot(se, reverse_se), (gain, se, reverse_gain, reverse_se)


def _check_learns(cfg, tmp_path):
    """`_check_gains` of the config and its reversed twin, run side by side in two processes of one thread."""
    cfg = _one_thread_evaluated_once(cfg)
    reversed_cfg = dataclasses.replace(cfg, reverse_preferences=True)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = [
            pool.submit(_train, cfg, tmp_path / "forward"),
            pool.submit(_train, reversed_cfg, tmp_path / "reverse"),
        ]
        _check_gains(*(run.result() for run in runs))


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
# on noise. Their gains are tens of standard errors (docs/models.md, "Model families"), so a short run shows
# them: D3PO 2 epochs, DRaFT 1, 16 evaluation images (seed 0, 7 December 2026: D3PO on tiny-sd3 +0.0003 at
# 21 SE, on tiny-sdxl +0.0068 at 25 SE; DRaFT-K on tiny-sdxl 40 SE, DRaFT-LV on tiny-sd3 38 SE).
FAMILY_RUNS = [
    ("tiny-sdxl", "d3po"),
    ("tiny-sdxl", "draft-k"),
    ("tiny-sdxl", "draft-lv"),
    ("tiny-sd3", "d3po"),
    ("tiny-sd3", "draft-k"),
    ("tiny-sd3", "draft-lv"),
]


def _family_config(model: str, method: str):
    common = dict(model=model, reward="brightness", seed=0, ray=False, track=False, eval_images=16)
    if method == "d3po":
        return D3POConfig(epochs=2, **common)
    return DRaFTConfig(epochs=1, variant=method, **common)


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory) -> dict:
    """{(model, method): (forward history, reversed history)}: every family run and its reversed twin in one
    pool of two one-thread processes, so the processes start (and import the model code) once for all."""
    folder = tmp_path_factory.mktemp("families")
    jobs = {}
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for model, method in FAMILY_RUNS:
            cfg = _one_thread_evaluated_once(_family_config(model, method))
            reversed_cfg = dataclasses.replace(cfg, reverse_preferences=True)
            name = f"{model}-{method}"
            jobs[model, method] = [
                pool.submit(_train, cfg, folder / f"{name}-forward"),
                pool.submit(_train, reversed_cfg, folder / f"{name}-reverse"),
            ]
        return {key: tuple(job.result() for job in pair) for key, pair in jobs.items()}


@pytest.mark.parametrize("model, method", FAMILY_RUNS)
def test_each_family_learns_brightness_with_d3po_and_draft_and_its_reversed_control_does_not(
    model, method, family_runs
):
    _check_gains(*family_runs[model, method])
