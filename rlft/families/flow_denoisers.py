"""The `Denoiser`s of the flow-matching families: Stable Diffusion 3.x and FLUX.1 (see
rlft/families/registry.py for what each family differs in). Their stochastic step is Flow-GRPO's SDE
(rlft/families/flow_sde.py), `eta` its noise level.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rlft.families.denoiser import Cond, Denoiser
from rlft.families.flow_sde import (
    flow_noised,
    flow_predicted_x0,
    flow_step,
    flow_step_with_logprob,
    step_sigmas,
)


class SD3Denoiser(Denoiser):
    """Stable Diffusion 3.x: the transformer predicts the flow-matching velocity from the joint text sequence
    and the pooled CLIP embeddings; steps follow Flow-GRPO's SDE, `eta` its noise level. The unconditional
    prompt is the empty prompt encoded, as the stock pipeline's default negative prompt."""

    model_part = "transformer"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Cond, Cond]:
        def encode(texts):
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                texts, texts, texts, device=self.device, do_classifier_free_guidance=False
            )
            return Cond(embeds=embeds, pooled=pooled)

        return encode(prompts), encode([""])

    def call(self, model: torch.nn.Module, latents: Tensor, t: Tensor, cond: Cond) -> Tensor:
        return model(
            hidden_states=latents,
            timestep=t,
            encoder_hidden_states=cond["embeds"],
            pooled_projections=cond["pooled"],
        ).sample

    def step(
        self, output: Tensor, t, latents: Tensor, *, eta: float, **kwargs
    ) -> tuple[Tensor, Tensor, Tensor]:
        return flow_step(self.scheduler, output, t, latents, noise_level=eta, **kwargs)

    def step_with_logprob(self, output: Tensor, t, latents: Tensor, *, eta: float, **kwargs):
        return flow_step_with_logprob(self.scheduler, output, t, latents, noise_level=eta, **kwargs)

    def predicted_x0(self, output: Tensor, t, latents: Tensor) -> Tensor:
        return flow_predicted_x0(output, step_sigmas(self.scheduler, t, latents)[0], latents)

    def noised(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return flow_noised(x0, noise, step_sigmas(self.scheduler, t, x0)[0])


class FluxDenoiser(SD3Denoiser):
    """FLUX.1: SD3's steps; its own encoding (T5 embeddings, CLIP's pooled one), packed latents, the guidance
    embedding instead of classifier-free guidance, and sigmas shifted by the image's token count."""

    @property
    def latent_channels(self) -> int:
        return self.model.config.in_channels // 4  # the packed model sees 2x2 patches of the latents

    @property
    def default_resolution(self) -> int:
        return self.pipe.default_sample_size * self.pipe.vae_scale_factor

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Cond, Cond]:
        def encode(texts):
            embeds, pooled, _ = self.pipe.encode_prompt(texts, texts, device=self.device)
            return Cond(embeds=embeds, pooled=pooled)

        return encode(prompts), encode([""])  # the empty prompt's: unused by FLUX's own guidance

    def guided(self, model, latents, timesteps, cond, uncond, guidance_scale: float) -> Tensor:
        batch = latents.shape[0]
        t = torch.as_tensor(timesteps, device=latents.device).reshape(-1).expand(batch)
        guidance = None
        if self.model.config.guidance_embeds:
            guidance = torch.full((batch,), guidance_scale, device=latents.device, dtype=torch.float32)
        return self.call(model, latents, t, cond, guidance)

    def call(self, model, latents: Tensor, t: Tensor, cond: Cond, guidance: Tensor | None = None) -> Tensor:
        batch, channels, height, width = latents.shape
        packed = self.pipe._pack_latents(latents, batch, channels, height, width)
        image_ids = self.pipe._prepare_latent_image_ids(
            batch, height // 2, width // 2, latents.device, latents.dtype
        )
        text_ids = torch.zeros(cond["embeds"].shape[1], 3, device=latents.device, dtype=latents.dtype)
        output = model(
            hidden_states=packed,
            timestep=t.to(latents.dtype) / 1000,
            guidance=guidance,
            pooled_projections=cond["pooled"],
            encoder_hidden_states=cond["embeds"],
            txt_ids=text_ids,
            img_ids=image_ids,
        ).sample
        return self.pipe._unpack_latents(
            output,
            *(side * self.pipe.vae_scale_factor for side in (height, width)),
            self.pipe.vae_scale_factor,
        )

    def set_timesteps(self, num_steps: int, resolution: int | None = None) -> Tensor:
        """FluxPipeline's schedule: sigmas from 1 to 1/num_steps, shifted by mu for the image's tokens."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        size = (resolution or self.default_resolution) // (self.pipe.vae_scale_factor * 2)
        config = self.scheduler.config
        mu = calculate_shift(
            size * size,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        self.scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        return self.scheduler.timesteps

    def initial_noise(self, groups: int, resolution: int, generator: torch.Generator) -> Tensor:
        """As FluxPipeline draws it: (groups, C, h, w) with h, w even (the 2x2 packing)."""
        size = 2 * (resolution // (self.pipe.vae_scale_factor * 2))
        shape = (groups, self.latent_channels, size, size)
        return torch.randn(shape, generator=generator, device=generator.device, dtype=self.model.dtype).to(
            self.device
        )
