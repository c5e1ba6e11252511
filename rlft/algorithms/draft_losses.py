"""DRaFT's losses (Clark et al., arXiv 2309.17400) and ReFL's (Xu et al., arXiv 2304.05977): the reward of
samples finished with gradient, as functions of the pipeline, the UNet being trained and the latents the
sampler left. rlft/algorithms/draft.py says what each variant is and applies them.
A sample whose reward is NaN drops out of the loss (the mean runs over the finite rewards)."""

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rlft.diffusion.ddim import ddim_step, predicted_x0
from rlft.diffusion.sampling import decode, guided_eps

RewardFn = Callable[[Tensor, list[str] | None], Tensor]  # (images, their prompts or None) -> (B,)


def _finite_mean(rewards: Tensor) -> Tensor:
    """Mean of the finite rewards (a NaN reward drops its sample from the loss)."""
    finite = torch.isfinite(rewards.detach())
    return rewards[finite].mean() if finite.any() else rewards.sum() * 0


def denoise_steps(
    unet: torch.nn.Module,
    scheduler: DDIMScheduler,
    latents: Tensor,
    timesteps: Tensor,
    embeds: Tensor,
    uncond: Tensor,
    *,
    guidance_scale: float,
    eta: float,
    noises: Tensor | None = None,
) -> Tensor:
    """Run the DDIM steps `timesteps` from `latents`, one checkpoint per UNet call (with gradient unless
    called under `torch.no_grad`).

    noises: (S, B, C, h, w), the step noise when eta > 0 (fixed noise makes the chain differentiable).
    """
    for i, t in enumerate(timesteps):
        eps = checkpoint(guided_eps, unet, latents, t, embeds, uncond, guidance_scale, use_reentrant=False)
        noise = noises[i] if noises is not None else torch.zeros_like(latents)
        latents = ddim_step(scheduler, eps, t, latents, eta=eta, noise=noise)[0]
    return latents


def draft_k_loss(
    pipe: StableDiffusionPipeline,
    unet: torch.nn.Module,
    reward_fn: RewardFn,
    latents_in: Tensor,
    timesteps: Tensor,
    embeds: Tensor,
    uncond: Tensor,
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
        unet,
        pipe.scheduler,
        latents_in.detach(),
        timesteps,
        embeds,
        uncond,
        guidance_scale=guidance_scale,
        eta=eta,
        noises=noises,
    )
    rewards = reward_fn(decode(pipe, x0), prompts)
    return -_finite_mean(rewards), rewards.detach()


def refl_loss(
    pipe: StableDiffusionPipeline,
    unet: torch.nn.Module,
    reward_fn: RewardFn,
    latents_in: Tensor,
    timestep: Tensor,
    embeds: Tensor,
    uncond: Tensor,
    *,
    guidance_scale: float,
    prompts: list[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """ReFL's loss, -mean reward of the x_0 one UNet call predicts from `latents_in` (B, C, h, w) at
    `timestep`. Returns (loss, rewards (B,)). No gradient reaches whatever computed `latents_in`."""
    latents = latents_in.detach()
    eps = checkpoint(guided_eps, unet, latents, timestep, embeds, uncond, guidance_scale, use_reentrant=False)
    x0 = predicted_x0(pipe.scheduler, eps, timestep, latents)
    rewards = reward_fn(decode(pipe, x0), prompts)
    return -_finite_mean(rewards), rewards.detach()


def draft_lv_loss(
    pipe: StableDiffusionPipeline,
    unet: torch.nn.Module,
    reward_fn: RewardFn,
    x0: Tensor,
    last_timestep: Tensor,
    embeds: Tensor,
    uncond: Tensor,
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
    noisy = pipe.scheduler.add_noise(x0.detach().repeat(n, 1, 1, 1), noise.flatten(0, 1), t)  # (nB, C, h, w)
    eps = guided_eps(unet, noisy, t, embeds.repeat(n, 1, 1), uncond, guidance_scale)
    denoised = ddim_step(pipe.scheduler, eps, t, noisy, eta=0.0)[0]
    copied = None if prompts is None else prompts * n  # the n copies are stacked copy-major
    rewards = reward_fn(decode(pipe, denoised), copied).reshape(n, batch)
    return -_finite_mean(rewards), rewards.detach()
