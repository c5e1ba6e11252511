"""The LAION aesthetic predictor with random weights and a small CLIP, offline."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from processes import SMALL_EVAL
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from rlft.rewards.aesthetic import (
    CLIP_MEAN,
    CLIP_STD,
    HEAD_FILE,
    AestheticHead,
    AestheticPredictor,
    clip_preprocess,
    load_predictor,
    save_folder,
)
from rlft.rewards.registry import get_reward

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)


def _predictor(seed: int = 0) -> AestheticPredictor:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(**SMALL, image_size=224, patch_size=32, projection_dim=768)
    return AestheticPredictor(CLIPVisionModelWithProjection(config), AestheticHead()).eval()


@pytest.mark.parametrize("height, width", [(32, 32), (512, 512), (40, 64)])
def test_clip_preprocess_matches_the_pil_pipeline_of_ddpo_and_imagereward(height, width):
    images = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    pixels = (images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    pil = Compose(
        [Resize(224, InterpolationMode.BICUBIC), CenterCrop(224), ToTensor(), Normalize(CLIP_MEAN, CLIP_STD)]
    )(Image.fromarray(pixels))
    ours = clip_preprocess(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255)[0]
    assert ours.shape == pil.shape == (3, 224, 224)
    # PIL rounds to 8 bits after resizing: on average they differ by under one grey level (1/255/std ~ 0.015).
    assert (ours - pil).abs().mean() < 0.01


def test_scores_have_one_value_per_image_and_gradients_reach_the_images():
    predictor = _predictor().requires_grad_(False)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    scores = predictor(images)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    scores.sum().backward()
    assert images.grad.abs().sum() > 0 and torch.isfinite(images.grad).all()


def test_a_saved_folder_scores_as_the_model_it_was_saved_from(tmp_path):
    predictor = _predictor(seed=3)
    save_folder(tmp_path, predictor)
    reward = get_reward(f"aesthetic:{tmp_path}", differentiable=True)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reward.fn(images, ["ignored", "prompts"]), predictor(images))
    # Loaded once per process: a second get_reward of the same folder shares the model.
    assert load_predictor(str(tmp_path)) is load_predictor(str(tmp_path))
    assert not any(p.requires_grad for p in load_predictor(str(tmp_path)).parameters())


def test_a_full_clip_model_folder_loads_its_vision_half(tmp_path):
    torch.manual_seed(0)
    text = dict(SMALL, vocab_size=99)
    config = CLIPConfig(
        text_config=text, vision_config=dict(SMALL, image_size=224, patch_size=32), projection_dim=768
    )
    clip = CLIPModel(config).eval()
    clip.save_pretrained(tmp_path)
    torch.save(AestheticHead().state_dict(), tmp_path / HEAD_FILE)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    loaded = load_predictor(str(tmp_path))
    with torch.no_grad():
        expected = clip.get_image_features(pixel_values=clip_preprocess(images))  # ddpo-pytorch's embedding
        torch.testing.assert_close(loaded.clip(pixel_values=clip_preprocess(images)).image_embeds, expected)


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_the_draft_job_trains_on_a_random_aesthetic_folder(tmp_path, reward_folders):
    flags = ["--epochs", "1", "--batch-size", "2", "--steps-per-epoch", "1", "--threads", "1", *SMALL_EVAL]
    flags += ["--no-ray", "--no-track", "--runs-dir", str(tmp_path / "runs"), "--run-name", "aesthetic"]
    result = _run("jobs/draft.py", "--reward", f"aesthetic:{reward_folders / 'aesthetic'}", *flags)
    assert result.returncode == 0, result.stderr
    assert "epoch   0 | eval" in result.stdout
    assert (tmp_path / "runs" / "aesthetic" / "adapter").is_dir()
