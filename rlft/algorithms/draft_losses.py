"""DRaFT's losses (Clark et al., arXiv 2309.17400) and ReFL's (Xu et al., arXiv 2304.05977): the reward of
samples finished with gradient, as functions of the model family's `Denoiser` (rlft/families/registry.py),
the model being trained and the latents the sampler left. rlft/algorithms/draft.py says what each variant is
and applies them. A sample whose reward is NaN drops out of the loss (the mean runs over the finite
rewards)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:  # the model code is imported by whoever builds the Denoiser
    from rlft.families.registry import Cond, Denoiser

RewardFn = Callable[[Tensor, list[str] | None], Tensor]  # (images, their prompts or None) -> (B,)


def _finite_mean(rewards: Tensor) -> Tensor:
    """Mean of the finite rewards (a NaN reward drops its sample from the loss)."""
    finite = torch.isfinite(rewards.detach())
    return rewards[finite].mean() if finite.any() else rewards.sum() * 0


def _guided(denoiser: Denoiser, model, latents, t, cond: Cond, uncond: Cond, guidance_scale: float) -> Tensor:
    """The guided model call under activation checkpointing (a Cond is a dict, which checkpoint passes)."""
    return checkpoint(denoiser.guided, model, latents, t, cond, uncond, guidance_scale, use_reentrant=False)


def denoise_steps(
    denoiser: Denoiser,
    model: torch.nn.Module,
    latents: Tensor,
    timesteps: Tensor,
    cond: Cond,
    uncond: Cond,
    *,
    guidance_scale: float,
    eta: float,
    noises: Tensor | None = None,
) -> Tensor:
    """Run the steps `timesteps` from `latents`, one checkpoint per model call (with gradient unless called
    under `torch.no_grad`).

    noises: (S, B, C, h, w), the step noise when eta > 0 (fixed noise makes the chain differentiable).
    """
    for i, t in enumerate(timesteps):
        output = _guided(denoiser, model, latents, t, cond, uncond, guidance_scale)
        noise = noises[i] if noises is not None else torch.zeros_like(latents)
        latents = denoiser.step(output, t, latents, eta=eta, noise=noise)[0]
    return latents


def draft_k_loss(
    denoiser: Denoiser,
    model: torch.nn.Module,
    reward_fn: RewardFn,
    latents_in: Tensor,
    timesteps: Tensor,
    cond: Cond,
    uncond: Cond,
    *,
    guidance_scale: float,
    eta: float = 0.0,
    noises: Tensor | None = None,
    prompts: list[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """DRaFT-K loss, -mean reward, from `latents_in` (B, C, h, w) entering the last K = len(timesteps) steps.

    Returns (loss, rewards (B,)). No gradient reaches whatever computed `latents_in`.
    """
    x0 = denoise_steps(
        denoiser,
        model,
        latents_in.detach(),
        timesteps,
        cond,
        uncond,
        guidance_scale=guidance_scale,
        eta=eta,
        noises=noises,
    )
    rewards = reward_fn(denoiser.decode(x0), prompts)
    return -_finite_mean(rewards), rewards.detach()


def refl_loss(
    denoiser: Denoiser,
    model: torch.nn.Module,
    reward_fn: RewardFn,
    latents_in: Tensor,
    timestep: Tensor,
    cond: Cond,
    uncond: Cond,
    *,
    guidance_scale: float,
    prompts: list[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """ReFL's loss, -mean reward of the x_0 one model call predicts from `latents_in` (B, C, h, w) at
    `timestep`. Returns (loss, rewards (B,)). No gradient reaches whatever computed `latents_in`."""
    latents = latents_in.detach()
    output = _guided(denoiser, model, latents, timestep, cond, uncond, guidance_scale)
    x0 = denoiser.predicted_x0(output, timestep, latents)
    rewards = reward_fn(denoiser.decode(x0), prompts)
    return -_finite_mean(rewards), rewards.detach()


def draft_lv_loss(
    denoiser: Denoiser,
    model: torch.nn.Module,
    reward_fn: RewardFn,
    x0: Tensor,
    last_timestep: Tensor,
    cond: Cond,
    uncond: Cond,
    *,
    guidance_scale: float,
    copies: int = 2,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    prompts: list[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """DRaFT-LV loss from final latents x0 (B, C, h, w): -(1/n) sum_i mean_b r(denoise(renoise_i(x0))).

    noise: (n, B, C, h, w), or drawn from `generator`. Returns (loss, rewards (n, B)).
    """
    n, batch = copies, x0.shape[0]
    if noise is None:
        noise = torch.randn((n, *x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
    t = torch.as_tensor(last_timestep, device=x0.device).reshape(1)
    noisy = denoiser.noised(x0.detach().repeat(n, 1, 1, 1), noise.flatten(0, 1), t)  # (nB, C, h, w)
    output = denoiser.guided(model, noisy, t, cond.repeat(n), uncond, guidance_scale)
    denoised = denoiser.step(output, t, noisy, eta=0.0)[0]
    copied = None if prompts is None else prompts * n  # the n copies are stacked copy-major
    rewards = reward_fn(denoiser.decode(denoised), copied).reshape(n, batch)
    return -_finite_mean(rewards), rewards.detach()
