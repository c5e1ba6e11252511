import pytest
import torch
from diffusers import DDIMScheduler

from rlft.algorithms.draft import DRaFTLearner
from rlft.algorithms.draft_losses import denoise_steps, draft_k_loss, draft_lv_loss, refl_loss
from rlft.configs import DRaFTConfig
from rlft.diffusion.policy import Policy
from rlft.families.ddim import predicted_x0
from rlft.families.registry import denoiser_for
from rlft.rewards.registry import smoothness

GUIDANCE = 3.0


@pytest.fixture
def setup(tiny_pipe):
    """A tiny pipeline's denoiser in float64 with a perturbed LoRA policy, 3 DDIM steps, and prompt
    conditioning."""
    pipe = denoiser_for(tiny_pipe)
    embeds, uncond = (c.to(torch.float64) for c in pipe.encode(["a photo of a cat", "a photo of a dog"]))
    pipe.model.double(), pipe.pipe.vae.double()  # CLIP's attention mask cannot be built in float64
    policy = Policy(pipe.model)
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
        return draft_k_loss(
            pipe, pipe.model, smoothness, x_T, steps, embeds, uncond, guidance_scale=GUIDANCE
        )[0]

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
    x_in = denoise_steps(pipe, pipe.model, x_T, steps[:2], embeds, uncond, guidance_scale=GUIDANCE, eta=0.0)
    assert x_in.requires_grad
    loss, _ = draft_k_loss(
        pipe, pipe.model, smoothness, x_in, steps[2:], embeds, uncond, guidance_scale=GUIDANCE
    )
    loss.backward()
    k1 = _grads(policy)
    _zero(policy)
    # The same last step from a detached copy gives the same gradient: nothing flowed into the first two.
    draft_k_loss(
        pipe, pipe.model, smoothness, x_in.detach(), steps[2:], embeds, uncond, guidance_scale=GUIDANCE
    )[0].backward()
    torch.testing.assert_close(_grads(policy), k1, rtol=0, atol=0)
    _zero(policy)
    # K = 2 from the earlier latent does reach the earlier step, so its gradient differs.
    x_mid = denoise_steps(pipe, pipe.model, x_T, steps[:1], embeds, uncond, guidance_scale=GUIDANCE, eta=0.0)
    draft_k_loss(pipe, pipe.model, smoothness, x_mid, steps[1:], embeds, uncond, guidance_scale=GUIDANCE)[
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
        pipe, pipe.model, smoothness, x0, last, embeds, uncond, copies=3, noise=noise, **kwargs
    )
    loss.backward()
    together = _grads(policy)
    assert rewards.shape == (3, 2)
    singles, single_grads = [], []
    for i in range(3):
        _zero(policy)
        single, _ = draft_lv_loss(
            pipe, pipe.model, smoothness, x0, last, embeds, uncond, copies=1, noise=noise[i : i + 1], **kwargs
        )
        single.backward()
        singles.append(single.item())
        single_grads.append(_grads(policy))
    assert loss.item() == pytest.approx(sum(singles) / 3, rel=1e-10)
    torch.testing.assert_close(together, torch.stack(single_grads).mean(0))
    assert len({round(s, 8) for s in singles}) == 3  # the copies really are different


def test_refl_at_the_last_step_is_draft_1_when_the_last_step_lands_on_x0(setup):
    pipe, policy, embeds, uncond, x_T = setup
    # With set_alpha_to_one the last DDIM step returns its x_0 prediction, so ReFL there is DRaFT-1.
    pipe.pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True)
    pipe.scheduler.set_timesteps(3)
    last = pipe.scheduler.timesteps[-1]
    refl, refl_rewards = refl_loss(
        pipe, pipe.model, smoothness, x_T, last, embeds, uncond, guidance_scale=GUIDANCE
    )
    refl.backward()
    refl_grads = _grads(policy)
    _zero(policy)
    draft, draft_rewards = draft_k_loss(
        pipe, pipe.model, smoothness, x_T, last.reshape(1), embeds, uncond, guidance_scale=GUIDANCE
    )
    draft.backward()
    torch.testing.assert_close(refl, draft)
    torch.testing.assert_close(refl_rewards, draft_rewards)
    torch.testing.assert_close(refl_grads, _grads(policy))


def test_refl_scores_the_predicted_x0_of_an_early_step_not_the_finished_sample(setup):
    pipe, policy, embeds, uncond, x_T = setup
    first = pipe.scheduler.timesteps[0]
    loss, rewards = refl_loss(
        pipe, pipe.model, smoothness, x_T, first, embeds, uncond, guidance_scale=GUIDANCE
    )
    with torch.no_grad():
        eps = pipe.guided(pipe.model, x_T, first, embeds, uncond, GUIDANCE)
        by_hand = smoothness(pipe.decode(predicted_x0(pipe.scheduler, eps, first, x_T)))
        finished = denoise_steps(
            pipe,
            pipe.model,
            x_T,
            pipe.scheduler.timesteps,
            embeds,
            uncond,
            guidance_scale=GUIDANCE,
            eta=0.0,
        )
    torch.testing.assert_close(rewards, by_hand)
    assert loss.item() == pytest.approx(-by_hand.mean().item())
    assert (smoothness(pipe.decode(finished)) - by_hand).abs().max() > 1e-4


@pytest.mark.parametrize("truncation", ["random", "one"])
def test_alignprop_and_refl_draw_every_start_of_the_last_k_steps_from_the_generator(tiny_pipe, truncation):
    learner = DRaFTLearner(
        denoiser_for(tiny_pipe),
        Policy(tiny_pipe.unet),
        smoothness,
        lr=1e-3,
        num_steps=8,
        k=4,
        truncation=truncation,
        guidance_scale=GUIDANCE,
    )
    draws = [learner.steps_without_grad(torch.Generator().manual_seed(s)) for s in range(200)]
    assert sorted(set(draws)) == [0, 1, 2, 3]  # AlignProp's K = 4 - draw covers 1..4
    assert min(draws.count(v) for v in range(4)) > 30  # about 50 each
    again = [learner.steps_without_grad(torch.Generator().manual_seed(s)) for s in range(200)]
    assert again == draws


def test_draft_k_draws_nothing_and_a_bad_truncation_is_refused(tiny_pipe):
    common = dict(lr=1e-3, num_steps=8, k=2, guidance_scale=GUIDANCE)
    learner = DRaFTLearner(denoiser_for(tiny_pipe), Policy(tiny_pipe.unet), smoothness, **common)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    assert learner.steps_without_grad(generator) == 0
    assert torch.equal(generator.get_state(), state)
    with pytest.raises(ValueError, match="truncation must be one of fixed, random, one, got 'sometimes'"):
        DRaFTLearner(learner.denoiser, learner.policy, smoothness, truncation="sometimes", **common)


def test_refl_and_alignprop_default_to_a_quarter_of_the_steps_and_name_themselves():
    assert DRaFTConfig().steps_with_grad == 1
    assert DRaFTConfig(variant="refl").steps_with_grad == 5  # 20 steps: ReFL's 10 of 40 scaled
    assert DRaFTConfig(variant="alignprop", num_steps=10).steps_with_grad == 2
    assert DRaFTConfig(variant="alignprop", k=6).steps_with_grad == 6
    assert DRaFTConfig(variant="full", k=3).steps_with_grad == 20
    assert DRaFTConfig(variant="refl").sampling_settings()["skip_last"] == 5
    assert DRaFTConfig(variant="refl").describe()[0].startswith("ReFL-style DRaFT (one of the last 5 steps")
    assert DRaFTConfig(variant="alignprop").describe()[0] == "AlignProp-style DRaFT (K drawn from 1..5)"
