"""Sampling trajectories: groups of samples that share the initial noise x_T, with every latent and log-prob.

One UNet call per denoising step covers the whole batch, classifier-free guidance included (the unconditional
and conditional halves go through together). The same `guided_eps` serves sampling and training.
"""

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from torch import Tensor

from rlft.diffusion.ddim import ddim_step, ddim_step_with_logprob


def encode_prompts(pipe: StableDiffusionPipeline, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """(prompt_embeds (N, L, D), unconditional embeds of the empty prompt (1, L, D))."""
    with torch.no_grad():
        embeds = pipe.encode_prompt(prompts, pipe.device, 1, do_classifier_free_guidance=False)[0]
        uncond = pipe.encode_prompt([""], pipe.device, 1, do_classifier_free_guidance=False)[0]
    return embeds, uncond


def guided_eps(
    unet: UNet2DConditionModel,
    latents: Tensor,
    timesteps: Tensor,
    embeds: Tensor,
    uncond: Tensor,
    guidance_scale: float,
) -> Tensor:
    """Classifier-free-guided model output for latents (B, C, h, w) at timesteps (B,) or (), one UNet call."""
    batch = latents.shape[0]
    t = torch.as_tensor(timesteps, device=latents.device).reshape(-1).expand(batch)
    if guidance_scale == 1.0:
        return unet(latents, t, encoder_hidden_states=embeds).sample
    both = unet(
        torch.cat([latents, latents]),  # (2B, C, h, w)
        torch.cat([t, t]),
        encoder_hidden_states=torch.cat([uncond.expand(batch, -1, -1), embeds]),
    ).sample
    eps_uncond, eps_cond = both.chunk(2)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def decode(pipe: StableDiffusionPipeline, latents: Tensor) -> Tensor:
    """Latents (B, C, h, w) to images (B, 3, H, W) in [0, 1]; differentiable."""
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (images / 2 + 0.5).clamp(0, 1)


def initial_noise(
    pipe: StableDiffusionPipeline, groups: int, resolution: int, generator: torch.Generator
) -> Tensor:
    """x_T for `groups` groups: (groups, C, h, w)."""
    size = resolution // pipe.vae_scale_factor
    shape = (groups, pipe.unet.config.in_channels, size, size)
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=pipe.unet.dtype)
    return noise.to(pipe.device) * pipe.scheduler.init_noise_sigma


@torch.no_grad()
def sample_trajectories(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    *,
    group_size: int = 1,
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 1.0,
    resolution: int | None = None,
    generator: torch.Generator | None = None,
    skip_last: int = 0,
    with_logprob: bool = True,
) -> dict[str, Tensor]:
    """Sample `group_size` images per prompt, the members of a group sharing x_T.

    Returns a dict of tensors, B = len(prompts) * group_size, members of a group adjacent:
      latents (B, S+1, C, h, w): x_T then the latent after each of the S steps run;
      timesteps (S,); log_probs (B, S) (if `with_logprob`); prompt_embeds (B, L, D); uncond_embeds (1, L, D);
      group (B,) the index of each sample's group; images (B, 3, H, W) in [0, 1] when every step ran.
    `skip_last` = K leaves the last K steps undone: latents[:, -1] is then the latent entering them (DRaFT-K).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if not 0 <= skip_last <= num_steps:
        raise ValueError(f"skip_last must be in 0..{num_steps} (num_steps), got {skip_last}")
    if with_logprob and eta <= 0:
        raise ValueError(f"eta must be > 0 when log-probabilities are recorded, got {eta}")
    generator = generator or torch.Generator(pipe.device).manual_seed(0)
    resolution = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    scheduler: DDIMScheduler = pipe.scheduler
    scheduler.set_timesteps(num_steps, device=pipe.device)
    timesteps = scheduler.timesteps[: num_steps - skip_last]

    embeds, uncond = encode_prompts(pipe, prompts)
    embeds = embeds.repeat_interleave(group_size, dim=0)  # (B, L, D)
    latents = initial_noise(pipe, len(prompts), resolution, generator).repeat_interleave(group_size, dim=0)

    all_latents, log_probs = [latents], []
    for t in timesteps:
        eps = guided_eps(pipe.unet, latents, t, embeds, uncond, guidance_scale)
        if with_logprob:
            latents, log_prob = ddim_step_with_logprob(
                scheduler, eps, t, latents, eta=eta, generator=generator
            )
            log_probs.append(log_prob)
        else:
            latents = ddim_step(scheduler, eps, t, latents, eta=eta, generator=generator)[0]
        all_latents.append(latents)

    out = {
        "latents": torch.stack(all_latents, dim=1),
        "timesteps": timesteps.clone(),
        "prompt_embeds": embeds,
        "uncond_embeds": uncond,
        "group": torch.arange(len(prompts), device=pipe.device).repeat_interleave(group_size),
    }
    if with_logprob:
        out["log_probs"] = torch.stack(log_probs, dim=1)
    if skip_last == 0:
        out["images"] = decode(pipe, latents)
    return out
