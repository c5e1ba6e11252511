"""ImageReward through the image-reward package's own class, with random weights, offline.

The package's BLIP tokenizer would fetch bert-base-uncased from the hub; here it reads a small vocab.txt.
Building the real class (BLIP ViT-L and BERT-base, 447 M parameters) and scoring it takes about a minute on
one CPU core, so everything that builds it is `slow`.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from processes import SMALL_EVAL

from rlft.rewards import imagereward
from rlft.rewards.registry import get_reward

PROMPTS = ["a photo of a cat", "a dog riding a bike"]


def test_the_prompts_are_required_before_any_weights_load():
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(
        ValueError, match="imagereward scores each image against its prompt: 2 images, no prompts"
    ):
        get_reward("imagereward").fn(images)
    with pytest.raises(ValueError, match="2 images, 1 prompts"):
        get_reward("imagereward").fn(images, ["a cat"])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagereward")
    words = sorted({w for p in PROMPTS for w in p.split()})
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n"
    )
    (folder / "med_config.json").write_text(json.dumps(imagereward.MED_CONFIG))
    torch.manual_seed(0)
    model = imagereward.build_model(folder / "med_config.json", folder).requires_grad_(False)
    # The package's head starts at std 1/769, which makes every score the same constant; a wider head makes
    # the scores differ between images, so the comparisons below mean something.
    for layer in model.mlp.layers:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=0.05)
    return model


@pytest.mark.slow
def test_the_package_class_scores_images_and_its_score_gives_image_gradients(model):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    scores = imagereward.score(model, images, PROMPTS)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert scores[0] != scores[1]
    scores.sum().backward()
    assert images.grad.abs().sum() > 0 and torch.isfinite(images.grad).all()


@pytest.mark.slow
def test_the_differentiable_score_agrees_with_the_packages_own_score_on_a_pil_image(model):
    pixels = torch.randint(0, 256, (48, 64, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        theirs = model.score(PROMPTS[0], Image.fromarray(pixels.numpy()))  # torchvision on PIL, as published
        ours = imagereward.score(model, pixels.permute(2, 0, 1)[None].float() / 255, PROMPTS[:1]).item()
    assert ours == pytest.approx(theirs, abs=0.02 * max(1.0, abs(theirs)))


@pytest.mark.slow
def test_a_saved_folder_loads_into_the_package_class_and_scores_the_same(model, tmp_path):
    imagereward.save_folder(tmp_path, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ImageReward.pt", "med_config.json", "tokenizer"]
    reward = get_reward(f"imagereward:{tmp_path}", differentiable=True)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reward.fn(images, PROMPTS), imagereward.score(model, images, PROMPTS))
    assert imagereward.load_model(str(tmp_path)) is imagereward.load_model(str(tmp_path))  # loaded once


@pytest.mark.slow
def test_the_draft_job_trains_on_a_random_imagereward_folder(tmp_path, reward_folders):
    root = Path(__file__).resolve().parents[2]
    flags = ["--epochs", "1", "--batch-size", "2", "--steps-per-epoch", "1", "--threads", "1", *SMALL_EVAL]
    flags += ["--no-ray", "--no-track", "--runs-dir", str(tmp_path / "runs"), "--run-name", "imagereward"]
    command = [sys.executable, "jobs/draft.py", "--reward", f"imagereward:{reward_folders / 'imagereward'}"]
    result = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=900, cwd=root)
    assert result.returncode == 0, result.stderr
    assert "epoch   0 | eval" in result.stdout
