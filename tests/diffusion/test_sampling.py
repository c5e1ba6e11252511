import pytest
import torch

from rlft.diffusion.sampling import sample_trajectories
from rlft.families.ddim import ddim_step_with_logprob
from rlft.families.registry import denoiser_for

PROMPTS = ["a photo of a cat", "a photo of a dog"]


def test_images_equal_the_stock_pipeline_for_the_same_seed(tiny_pipe):
    stock = tiny_pipe(
        PROMPTS,
        num_inference_steps=8,
        height=16,
        width=16,
        eta=1.0,
        guidance_scale=5.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(3),
    ).images
    ours = sample_trajectories(
        tiny_pipe,
        PROMPTS,
        num_steps=8,
        resolution=16,
        eta=1.0,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(3),
    )
    torch.testing.assert_close(ours["images"], stock)


def test_groups_share_initial_noise_and_record_every_step(tiny_pipe):
    out = sample_trajectories(
        tiny_pipe, PROMPTS, group_size=3, num_steps=6, generator=torch.Generator().manual_seed(0)
    )
    assert out["latents"].shape == (6, 7, 4, 16, 16)  # the tiny model makes 32x32 images
    assert out["log_probs"].shape == (6, 6) and out["timesteps"].shape == (6,)
    assert out["images"].shape == (6, 3, 32, 32)
    assert out["group"].tolist() == [0, 0, 0, 1, 1, 1]
    x_T = out["latents"][:, 0]
    assert torch.equal(x_T[0], x_T[2]) and torch.equal(x_T[3], x_T[5]) and not torch.equal(x_T[0], x_T[3])
    assert not torch.equal(out["latents"][0, -1], out["latents"][1, -1])  # eta > 0: members diverge


def test_recorded_log_probs_are_those_of_the_recorded_steps(tiny_pipe):
    out = sample_trajectories(tiny_pipe, PROMPTS, num_steps=5, generator=torch.Generator().manual_seed(1))
    cond, uncond = denoiser_for(tiny_pipe).encode(PROMPTS)
    for i, t in enumerate(out["timesteps"]):
        x = out["latents"][:, i]
        eps = denoiser_for(tiny_pipe).guided(tiny_pipe.unet, x, t, cond, uncond, 5.0)
        _, log_prob = ddim_step_with_logprob(
            tiny_pipe.scheduler, eps, t, x, eta=1.0, prev_sample=out["latents"][:, i + 1]
        )
        torch.testing.assert_close(log_prob, out["log_probs"][:, i])


def test_skip_last_returns_the_latent_entering_the_last_steps(tiny_pipe):
    full = sample_trajectories(
        tiny_pipe,
        PROMPTS,
        num_steps=6,
        eta=0.0,
        with_logprob=False,
        generator=torch.Generator().manual_seed(2),
    )
    prefix = sample_trajectories(
        tiny_pipe,
        PROMPTS,
        num_steps=6,
        eta=0.0,
        with_logprob=False,
        skip_last=2,
        generator=torch.Generator().manual_seed(2),
    )
    assert "images" not in prefix and prefix["timesteps"].numel() == 4
    torch.testing.assert_close(prefix["latents"][:, -1], full["latents"][:, 4])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eta": 0.0}, "eta must be > 0"),
        ({"skip_last": 9}, "skip_last must be in 0..6"),
        ({"group_size": 0}, "group_size must be >= 1"),
    ],
)
def test_bad_sampling_arguments(tiny_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_trajectories(tiny_pipe, PROMPTS, num_steps=6, **kwargs)
