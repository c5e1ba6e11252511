import pytest
import torch

from rlft.rewards import get_reward, jpeg_compressibility, jpeg_size_kb, smoothness


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


def test_unknown_or_non_differentiable_rewards_are_refused_by_name():
    with pytest.raises(ValueError, match="'aesthetics' is unknown; choose one of jpeg-compressibility"):
        get_reward("aesthetics")
    with pytest.raises(ValueError, match="'jpeg-compressibility' is not differentiable"):
        get_reward("jpeg-compressibility", differentiable=True)
