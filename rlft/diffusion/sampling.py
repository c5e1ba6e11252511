"""Sampling trajectories: groups of samples that share the initial noise x_T, with every latent and log-prob.

Written once for every model family against its `Denoiser` (rlft/families/registry.py). One model call per
denoising step covers the whole batch, classifier-free guidance included (the unconditional and conditional
halves go through together); training makes the same call through `Denoiser.guided`.
"""

import torch
from torch import Tensor

from rlft.families.registry import Cond, denoiser_for


def encode_prompts(pipe, prompts: list[str]) -> tuple[Cond, Cond]:
    """(the prompts' conditioning, N rows; the empty prompt's, one row)."""
    return denoiser_for(pipe).encode(prompts)


@torch.no_grad()
def sample_trajectories(
    pipe,
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
      timesteps (S,); log_probs (B, S) (if `with_logprob`); group (B,) the index of each sample's group;
      images (B, 3, H, W) in [0, 1] when every step ran.
    `skip_last` = K leaves the last K steps undone: latents[:, -1] is then the latent entering them (DRaFT-K).
    `eta` is the step's stochasticity: DDIM's eta, or the flow-matching SDE's noise level.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if not 0 <= skip_last <= num_steps:
        raise ValueError(f"skip_last must be in 0..{num_steps} (num_steps), got {skip_last}")
    if with_logprob and eta <= 0:
        raise ValueError(f"eta must be > 0 when log-probabilities are recorded, got {eta}")
    denoiser = denoiser_for(pipe)
    generator = generator or torch.Generator(pipe.device).manual_seed(0)
    resolution = resolution or denoiser.default_resolution
    timesteps = denoiser.set_timesteps(num_steps, resolution)[: num_steps - skip_last]

    cond, uncond = denoiser.encode(prompts)
    cond = cond.take(torch.arange(len(prompts), device=pipe.device).repeat_interleave(group_size))
    latents = denoiser.initial_noise(len(prompts), resolution, generator).repeat_interleave(group_size, dim=0)

    all_latents, log_probs = [latents], []
    for t in timesteps:
        output = denoiser.guided(denoiser.model, latents, t, cond, uncond, guidance_scale)
        if with_logprob:
            latents, log_prob = denoiser.step_with_logprob(output, t, latents, eta=eta, generator=generator)
            log_probs.append(log_prob)
        else:
            latents = denoiser.step(output, t, latents, eta=eta, generator=generator)[0]
        all_latents.append(latents)

    out = {
        "latents": torch.stack(all_latents, dim=1),
        "timesteps": timesteps.clone(),
        "group": torch.arange(len(prompts), device=pipe.device).repeat_interleave(group_size),
    }
    if with_logprob:
        out["log_probs"] = torch.stack(log_probs, dim=1)
    if skip_last == 0:
        out["images"] = denoiser.decode(latents)
    return out
