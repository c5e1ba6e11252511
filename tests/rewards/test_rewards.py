import re
import time

import pytest
import torch

from rlft.rewards.aesthetic import HEAD_FILE
from rlft.rewards.registry import get_reward, jpeg_compressibility, jpeg_size_kb, reward_names, smoothness


def test_noise_makes_a_bigger_jpeg_than_a_flat_image():
    g = torch.Generator().manual_seed(0)
    images = torch.stack([torch.full((3, 32, 32), 0.5), torch.rand(3, 32, 32, generator=g)])
    sizes = jpeg_size_kb(images)
    assert sizes[1] > sizes[0] + 0.5  # 32x32 noise costs about 2 kB, a flat image under 1
    torch.testing.assert_close(jpeg_compressibility(images), -sizes)


def test_smoothness_is_differentiable_and_prefers_flat_images():
    noisy = torch.rand(2, 3, 16, 16, requires_grad=True)
    reward = smoothness(noisy)
    reward.sum().backward()
    assert noisy.grad.abs().sum() > 0
    assert smoothness(torch.full((1, 3, 16, 16), 0.3)).item() == 0.0
    assert (reward < 0).all()


@pytest.mark.parametrize(
    "name", ["jpeg-compressibility", "jpeg-incompressibility", "smoothness", "brightness"]
)
def test_prompt_free_rewards_take_prompts_or_none_alike(name):
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    reward = get_reward(name)
    assert not reward.needs_prompts
    torch.testing.assert_close(reward.fn(images), reward.fn(images, ["a", "b", "c"]))
    assert reward.fn(images, prompts=None).shape == (3,)


def test_unknown_or_non_differentiable_rewards_are_refused_by_name():
    with pytest.raises(ValueError, match="'aesthetics' is unknown; choose one of jpeg-compressibility"):
        get_reward("aesthetics")
    with pytest.raises(ValueError, match="'brightness:/w' is unknown; .*aesthetic\\[:<folder>\\]"):
        get_reward("brightness:/w")
    with pytest.raises(ValueError, match="'jpeg-compressibility' is not differentiable"):
        get_reward("jpeg-compressibility", differentiable=True)


def test_model_rewards_are_named_without_loading_any_weights():
    start = time.perf_counter()
    aesthetic, imagereward = get_reward("aesthetic"), get_reward("imagereward", differentiable=True)
    pickscore = get_reward("pickscore", differentiable=True)
    assert time.perf_counter() - start < 1.0  # config validation must not load a model
    assert aesthetic.differentiable and not aesthetic.needs_prompts
    assert imagereward.differentiable and imagereward.needs_prompts
    assert pickscore.differentiable and pickscore.needs_prompts


@pytest.mark.parametrize("kind", ["aesthetic", "imagereward", "pickscore"])
def test_a_reward_folder_that_does_not_exist_is_named_with_the_files_expected(kind, tmp_path):
    folder = tmp_path / "nowhere"
    expected = {
        "aesthetic": "config.json, model.safetensors or pytorch_model.bin",
        "imagereward": "ImageReward.pt",
        "pickscore": "config.json and model.safetensors or pytorch_model.bin .a transformers CLIPModel.",
    }
    with pytest.raises(ValueError, match=f"folder '{folder}' does not exist; expected {expected[kind]}"):
        get_reward(f"{kind}:{folder}")


def test_a_reward_folder_without_its_files_names_the_missing_ones(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(
        ValueError, match=re.escape(f"'{tmp_path}' lacks {HEAD_FILE}, model.safetensors or pytorch_model")
    ):
        get_reward(f"aesthetic:{tmp_path}")
    (tmp_path / "ImageReward.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=f"'{tmp_path}' lacks med_config.json; expected ImageReward.pt and"):
        get_reward(f"imagereward:{tmp_path}", differentiable=True)


def test_several_rewards_score_into_columns_in_the_order_named():
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    reward = get_reward("brightness,jpeg-compressibility")
    scores = reward.fn(images)  # (B, R)
    assert scores.shape == (4, 2)
    torch.testing.assert_close(scores[:, 0], images.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(scores[:, 1], jpeg_compressibility(images))
    assert reward_names("aesthetic:/some/folder,brightness") == ["aesthetic", "brightness"]


def test_several_rewards_are_refused_for_draft_twice_named_or_with_an_unknown_part():
    with pytest.raises(ValueError, match="'smoothness,brightness' names several rewards; DRaFT takes one"):
        get_reward("smoothness,brightness", differentiable=True)
    with pytest.raises(ValueError, match="names brightness more than once"):
        get_reward("brightness,brightness")
    with pytest.raises(ValueError, match="reward '' is unknown"):
        get_reward("brightness,")
