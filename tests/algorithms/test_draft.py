import pytest
import torch

from rlft.algorithms.draft import denoise_with_grad, draft_k_loss, draft_lv_loss
from rlft.diffusion.policy import Policy
from rlft.diffusion.sampling import encode_prompts
from rlft.rewards.registry import smoothness

GUIDANCE = 3.0


@pytest.fixture
def setup(tiny_pipe):
    """A tiny pipeline in float64 with a perturbed LoRA policy, 3 DDIM steps, and prompt embeddings."""
    pipe = tiny_pipe
    embeds, uncond = (e.double() for e in encode_prompts(pipe, ["a photo of a cat", "a photo of a dog"]))
    pipe.unet.double(), pipe.vae.double()  # CLIP's attention mask cannot be built in float64
    policy = Policy(pipe.unet)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    pipe.scheduler.set_timesteps(3)
    x_T = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    return pipe, policy, embeds, uncond, x_T


def _grads(policy):
    return torch.cat([p.grad.flatten() for p in policy.parameters()])


def _zero(policy):
    for p in policy.parameters():
        p.grad = None


def test_draft_gradient_agrees_with_finite_differences(setup):
    pipe, policy, embeds, uncond, x_T = setup
    steps = pipe.scheduler.timesteps  # full DRaFT: K = all 3 steps

    def loss_fn():
        return draft_k_loss(pipe, pipe.unet, smoothness, x_T, steps, embeds, uncond, guidance_scale=GUIDANCE)[
            0
        ]

    loss_fn().backward()
    params = policy.parameters()
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((p.grad * d).sum() for p, d in zip(params, direction, strict=True)).item()
    h = 1e-5
    with torch.no_grad():
        for p, d in zip(params, direction, strict=True):
            p.add_(h * d)
        plus = loss_fn().item()
        for p, d in zip(params, direction, strict=True):
            p.sub_(2 * h * d)
        minus = loss_fn().item()
    numeric = (plus - minus) / (2 * h)
    assert abs(analytic) > 1e-4
    assert analytic == pytest.approx(numeric, rel=1e-4)


def test_k1_gradient_stops_at_the_latent_entering_the_last_step(setup):
    pipe, policy, embeds, uncond, x_T = setup
    steps = pipe.scheduler.timesteps
    # The latent entering the last step, computed *with* gradient through the first two steps.
    x_in = denoise_with_grad(
        pipe.unet, pipe.scheduler, x_T, steps[:2], embeds, uncond, guidance_scale=GUIDANCE, eta=0.0
    )
    assert x_in.requires_grad
    loss, _ = draft_k_loss(
        pipe, pipe.unet, smoothness, x_in, steps[2:], embeds, uncond, guidance_scale=GUIDANCE
    )
    loss.backward()
    k1 = _grads(policy)
    _zero(policy)
    # The same last step from a detached copy gives the same gradient: nothing flowed into the first two.
    draft_k_loss(
        pipe, pipe.unet, smoothness, x_in.detach(), steps[2:], embeds, uncond, guidance_scale=GUIDANCE
    )[0].backward()
    torch.testing.assert_close(_grads(policy), k1, rtol=0, atol=0)
    _zero(policy)
    # K = 2 from the earlier latent does reach the earlier step, so its gradient differs.
    x_mid = denoise_with_grad(
        pipe.unet, pipe.scheduler, x_T, steps[:1], embeds, uncond, guidance_scale=GUIDANCE, eta=0.0
    )
    draft_k_loss(pipe, pipe.unet, smoothness, x_mid, steps[1:], embeds, uncond, guidance_scale=GUIDANCE)[
        0
    ].backward()
    assert (_grads(policy) - k1).abs().max() > 1e-6


def test_draft_lv_averages_its_n_copies(setup):
    pipe, policy, embeds, uncond, x_T = setup
    x0 = x_T * 0.5  # any final latent
    noise = torch.randn(3, *x0.shape, generator=torch.Generator().manual_seed(4), dtype=x0.dtype)
    last = pipe.scheduler.timesteps[-1]
    kwargs = dict(guidance_scale=GUIDANCE)
    loss, rewards = draft_lv_loss(
        pipe, pipe.unet, smoothness, x0, last, embeds, uncond, copies=3, noise=noise, **kwargs
    )
    loss.backward()
    together = _grads(policy)
    assert rewards.shape == (3, 2)
    singles, single_grads = [], []
    for i in range(3):
        _zero(policy)
        single, _ = draft_lv_loss(
            pipe, pipe.unet, smoothness, x0, last, embeds, uncond, copies=1, noise=noise[i : i + 1], **kwargs
        )
        single.backward()
        singles.append(single.item())
        single_grads.append(_grads(policy))
    assert loss.item() == pytest.approx(sum(singles) / 3, rel=1e-10)
    torch.testing.assert_close(together, torch.stack(single_grads).mean(0))
    assert len({round(s, 8) for s in singles}) == 3  # the copies really are different
