"""`--reward aesthetic`, `pickscore` and `imagereward` (no folder) load through the real hub code:
transformers' `from_pretrained` and `hf_hub_download` for the aesthetic predictor and PickScore, the
image-reward package's own `load` for ImageReward. No hub can be reached here, so each test fills the caches
that code reads (Hugging Face's cache under HF_HOME, and ~/.cache/ImageReward) with random weights, as a
first download would, and runs the DRaFT job on the tiny model offline (HF_HUB_OFFLINE=1) - slow tier."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from processes import SMALL_EVAL

from rlft.rewards import aesthetic, pickscore

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
COMMIT = "0" * 40
FLAGS = [
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--steps-per-epoch",
    "1",
    "--threads",
    "1",
    "--no-ray",
    "--no-track",
    *SMALL_EVAL,
]


def cache_snapshot(hf_home: Path, repo: str, files: dict[str, Path]) -> None:
    """Put `files` in Hugging Face's cache as the snapshot of `repo`'s main branch (the layout
    `hf_hub_download` writes: refs/main names the commit, snapshots/<commit>/ holds the files)."""
    cache = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(COMMIT)
    snapshot = cache / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        os.link(source, snapshot / name)  # a hard link: the 1.8 GB ImageReward weights are not copied


def draft_job(reward: str, home: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"HOME": str(home), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    command = [
        sys.executable,
        "jobs/draft.py",
        "--reward",
        reward,
        *FLAGS,
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)


def test_reward_aesthetic_loads_clip_and_the_head_through_the_hub_cache(tmp_path, reward_folders):
    folder = reward_folders / "aesthetic"
    home = tmp_path / "home"
    # With nothing cached and no network the hub path fails, saying so: what follows really reads the cache.
    failed = draft_job("aesthetic", home, tmp_path)
    assert failed.returncode != 0
    assert "reward 'aesthetic': cannot load openai/clip-vit-large-patch14" in failed.stderr
    assert "use aesthetic:<folder>" in failed.stderr
    clip = {name: folder / name for name in ("config.json", "model.safetensors")}
    cache_snapshot(home / "hf", aesthetic.HUB_CLIP, clip)
    cache_snapshot(home / "hf", aesthetic.HUB_HEAD[0], {aesthetic.HUB_HEAD[1]: folder / aesthetic.HEAD_FILE})
    result = draft_job("aesthetic", home, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reward aesthetic" in result.stdout and "epoch   0 | eval" in result.stdout


def test_reward_pickscore_loads_the_model_and_the_processors_tokenizer_through_the_hub_cache(
    tmp_path, reward_folders
):
    folder = reward_folders / "pickscore"
    home = tmp_path / "home"
    failed = draft_job("pickscore", home, tmp_path)
    assert failed.returncode != 0
    assert f"reward 'pickscore': cannot load {pickscore.HUB_MODEL}" in failed.stderr
    assert "use pickscore:<folder>" in failed.stderr
    model = {name: folder / name for name in ("config.json", "model.safetensors")}
    tokenizer = {f.name: f for f in folder.iterdir() if f.name not in model}
    cache_snapshot(home / "hf", pickscore.HUB_MODEL, model)
    cache_snapshot(home / "hf", pickscore.HUB_PROCESSOR, tokenizer)
    result = draft_job("pickscore", home, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reward pickscore" in result.stdout and "epoch   0 | eval" in result.stdout


def test_reward_imagereward_loads_through_the_packages_own_load(tmp_path, reward_folders):
    folder = reward_folders / "imagereward"
    home = tmp_path / "home"
    # The package's `load` fetches ImageReward.pt and med_config.json into ~/.cache/ImageReward, and its BLIP
    # tokenizer fetches bert-base-uncased's vocabulary into the hub cache.
    downloads = home / ".cache" / "ImageReward"
    downloads.mkdir(parents=True)
    os.link(folder / "ImageReward.pt", downloads / "ImageReward.pt")
    shutil.copy(folder / "med_config.json", downloads / "med_config.json")
    cache_snapshot(home / "hf", "bert-base-uncased", {"vocab.txt": folder / "tokenizer" / "vocab.txt"})
    result = draft_job("imagereward", home, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reward imagereward" in result.stdout and "epoch   0 | eval" in result.stdout
