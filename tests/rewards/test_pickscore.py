"""PickScore with a small random CLIP and a tokenizer built offline
(benchmarks/tools/random_reward_folders.py)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPProcessor

from rlft.rewards.pickscore import check_folder, load_scorer, random_scorer, save_folder
from rlft.rewards.registry import get_reward

PROMPTS = ["a red circle on a blue background", "a green square"]


@pytest.fixture(scope="module")
def scorer():
    return random_scorer(small=True, seed=0).requires_grad_(False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, scorer):
    out = tmp_path_factory.mktemp("pickscore")
    save_folder(out, scorer)
    return out


def _images(count: int = 2, size: int = 32) -> torch.Tensor:
    pixels = torch.randint(0, 256, (count, 3, size, size), generator=torch.Generator().manual_seed(0))
    return pixels.float() / 255  # exactly representable as 8-bit images, as the model card's PIL input is


def test_the_prompts_are_required_before_any_weights_load():
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(
        ValueError, match="pickscore scores each image against its prompt: 2 images, no prompts"
    ):
        get_reward("pickscore").fn(images)
    with pytest.raises(ValueError, match="2 images, 1 prompts"):
        get_reward("pickscore").fn(images, ["a cat"])


def test_the_score_is_the_model_cards_on_pil_images(scorer):
    """The model card: the processor on PIL images and on the prompt, then logit_scale.exp() times the cosine
    of the normalised features."""
    images = _images()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=scorer.tokenizer)
    pil = [Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()) for im in images]
    with torch.no_grad():
        image_inputs = processor(images=pil, return_tensors="pt")
        text_inputs = processor(
            text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        image_embs = scorer.clip.get_image_features(**image_inputs)
        image_embs = image_embs / image_embs.norm(dim=-1, keepdim=True)
        text_embs = scorer.clip.get_text_features(**text_inputs)
        text_embs = text_embs / text_embs.norm(dim=-1, keepdim=True)
        card = scorer.clip.logit_scale.exp() * (image_embs * text_embs).sum(dim=-1)
        ours = scorer(images, PROMPTS)
    assert ours.shape == (2,)
    # PIL rounds the resized image to 8 bits; the tensor path does not (see clip_preprocess's test).
    np.testing.assert_allclose(ours.numpy(), card.numpy(), atol=0.02)


def test_the_score_depends_on_the_prompt_and_its_gradient_reaches_the_images(scorer):
    images = _images().requires_grad_(True)
    scores = scorer(images, PROMPTS)
    swapped = scorer(images, PROMPTS[::-1])
    assert not torch.allclose(scores, swapped)
    scores.sum().backward()
    assert images.grad.abs().sum() > 0 and torch.isfinite(images.grad).all()


def test_a_saved_folder_scores_as_the_model_it_was_saved_from(scorer, folder):
    reward = get_reward(f"pickscore:{folder}", differentiable=True)
    assert reward.needs_prompts and reward.differentiable
    with torch.no_grad():
        torch.testing.assert_close(reward.fn(_images(), PROMPTS), scorer(_images(), PROMPTS))
    assert load_scorer(str(folder)) is load_scorer(str(folder))  # loaded once per process


def test_a_folder_without_the_model_or_tokenizer_is_refused_naming_what_it_lacks(tmp_path, folder):
    with pytest.raises(ValueError, match=r"reward 'pickscore': folder '.*nowhere' does not exist"):
        check_folder(str(tmp_path / "nowhere"))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(
        ValueError, match=r"lacks model.safetensors or pytorch_model.bin, tokenizer.json or vocab"
    ):
        get_reward(f"pickscore:{tmp_path}")
