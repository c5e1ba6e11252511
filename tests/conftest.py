import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlft.world.tiny_model import build_tiny_pipeline

SLOW_TIER = "pytest -m slow"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    # One thread per process is fastest for tensors this small.
    torch.set_num_threads(1)


@pytest.fixture
def tiny_pipe():
    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    return pipe


@pytest.fixture(scope="session")
def reward_folders(tmp_path_factory) -> Path:
    """Random reward folders, written once per test run: aesthetic/ (a small CLIP and a random head),
    pickscore/ (a small CLIPModel and its tokenizer) and imagereward/ (ImageReward's full shape, 447 M
    parameters, 1.8 GB on disk)."""
    out = tmp_path_factory.mktemp("reward_folders")
    made = subprocess.run(
        [sys.executable, "benchmarks/tools/random_reward_folders.py", str(out), "--small"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert made.returncode == 0, made.stderr
    return out


def pytest_xdist_auto_num_workers(config):
    """The quick tier runs a process per core (pyproject's `-n auto`); the slow tier one test at a time. Ray
    runs its workers at niceness 15, so a Ray test's actors starve beside another test's work: with two at a
    time the slow tier took 78 minutes instead of 66 here and two Ray tests ran past their timeouts."""
    expression = config.option.markexpr or ""
    if "slow" in expression and "not slow" not in expression:
        return 0
    return None  # pytest-xdist's own count


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The default run is the quick tier (pyproject's addopts); say how to run the rest."""
    deselected = [r for r in terminalreporter.stats.get("deselected", []) if "slow" in r.keywords]
    if deselected:
        terminalreporter.write_line(
            f"{len(deselected)} slow tests (whole loops, Ray, MLflow servers, the browser) were not run: "
            f"{SLOW_TIER}"
        )
