"""The `Denoiser` of the UNet families and the batch of prompt conditioning every family passes around.

`Denoiser` is Stable Diffusion 1.x/2.x's (a UNet on CLIP text embeddings, DDIM steps from
rlft/families/ddim.py, `eta` DDIM's); `XLDenoiser` adds SDXL's pooled embedding and time ids. The
flow-matching families subclass it in rlft/families/flow_denoisers.py; rlft/families/registry.py picks one
per pipeline class.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlft.families.ddim import ddim_step, ddim_step_with_logprob, predicted_x0


class Cond(dict):
    """A batch of prompt conditioning: name -> tensor with one row per prompt (embeds (N, L, D), pooled
    (N, P), ...), indexed and repeated row-wise together."""

    def take(self, index: Tensor) -> Cond:
        return Cond({k: v[index] for k, v in self.items()})

    def repeat(self, n: int) -> Cond:
        """Every row n times, copy-major (rows 0..N-1, then 0..N-1 again), as `torch.Tensor.repeat`."""
        return Cond({k: v.repeat(n, *([1] * (v.ndim - 1))) for k, v in self.items()})

    def expand(self, rows: int) -> Cond:
        """A one-row Cond (the unconditional prompt) as `rows` rows."""
        return Cond({k: v.expand(rows, *v.shape[1:]) for k, v in self.items()})

    def cat(self, other: Cond) -> Cond:
        return Cond({k: torch.cat([v, other[k]]) for k, v in self.items()})

    def to(self, *args, **kwargs) -> Cond:
        return Cond({k: v.to(*args, **kwargs) for k, v in self.items()})


class Denoiser:
    """Stable Diffusion 1.x/2.x: a UNet predicting noise from CLIP text embeddings, DDIM steps."""

    model_part = "unet"

    def __init__(self, pipe):
        self.pipe = pipe

    @property
    def model(self) -> torch.nn.Module:
        """The trainable module: the UNet or the transformer."""
        return getattr(self.pipe, self.model_part)

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    @property
    def latent_channels(self) -> int:
        return self.model.config.in_channels

    @property
    def default_resolution(self) -> int:
        return self.model.config.sample_size * self.pipe.vae_scale_factor

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Cond, Cond]:
        """(the prompts' conditioning, N rows; the empty prompt's, one row)."""
        embeds = self.pipe.encode_prompt(prompts, self.device, 1, do_classifier_free_guidance=False)[0]
        uncond = self.pipe.encode_prompt([""], self.device, 1, do_classifier_free_guidance=False)[0]
        return Cond(embeds=embeds), Cond(embeds=uncond)

    def call(self, model: torch.nn.Module, latents: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """The model's output for latents (B, C, h, w) at timesteps t (B,) under conditioning of B rows."""
        return model(latents, t, encoder_hidden_states=cond["embeds"]).sample

    def guided(
        self,
        model: torch.nn.Module,
        latents: Tensor,
        timesteps: Tensor,
        cond: Cond,
        uncond: Cond,
        guidance_scale: float,
    ) -> Tensor:
        """Classifier-free-guided output at timesteps (B,) or (); one model call covers both halves."""
        batch = latents.shape[0]
        t = torch.as_tensor(timesteps, device=latents.device).reshape(-1).expand(batch)
        if guidance_scale == 1.0:
            return self.call(model, latents, t, cond)
        both = self.call(
            model, torch.cat([latents, latents]), torch.cat([t, t]), uncond.expand(batch).cat(cond)
        )
        out_uncond, out_cond = both.chunk(2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    def set_timesteps(self, num_steps: int, resolution: int | None = None) -> Tensor:
        """Set (and return) the scheduler's timesteps for `num_steps` steps at `resolution` (default: the
        model's); only FLUX's depend on the resolution."""
        self.scheduler.set_timesteps(num_steps, device=self.device)
        return self.scheduler.timesteps

    def resolution_of(self, latents: Tensor) -> int:
        """The image size latents (B, C, h, w) decode to."""
        return latents.shape[-1] * self.pipe.vae_scale_factor

    def step(
        self, output: Tensor, t, latents: Tensor, *, eta: float, **kwargs
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One stochastic step: (prev_sample, mean, std); kwargs: prev_sample, noise, generator."""
        return ddim_step(self.scheduler, output, t, latents, eta=eta, **kwargs)

    def step_with_logprob(self, output: Tensor, t, latents: Tensor, *, eta: float, **kwargs):
        """(prev_sample, the step's log-probability (B,)); kwargs: prev_sample, generator."""
        return ddim_step_with_logprob(self.scheduler, output, t, latents, eta=eta, **kwargs)

    def predicted_x0(self, output: Tensor, t, latents: Tensor) -> Tensor:
        return predicted_x0(self.scheduler, output, t, latents)

    def noised(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_0 carried forward to timestep t, one or (B,), with `noise` (DRaFT-LV, D3PO's noised pairs)."""
        return self.scheduler.add_noise(x0, noise, torch.as_tensor(t, device=x0.device).reshape(-1))

    def initial_noise(self, groups: int, resolution: int, generator: torch.Generator) -> Tensor:
        """x_T for `groups` groups: (groups, C, h, w)."""
        size = resolution // self.pipe.vae_scale_factor
        shape = (groups, self.latent_channels, size, size)
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=self.model.dtype)
        return noise.to(self.device) * getattr(self.scheduler, "init_noise_sigma", 1.0)  # flow: 1

    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, C, h, w) to images (B, 3, H, W) in [0, 1], in float32 at least whatever the model's
        dtype (rewards and image logs take float32); differentiable."""
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = latents.to(vae.dtype)  # a float32 x_0 prediction (ReFL) into a bfloat16 VAE
        images = vae.decode(latents / vae.config.scaling_factor + shift).sample
        images = images.to(torch.promote_types(images.dtype, torch.float32))  # float64 (grad checks) stays
        return (images / 2 + 0.5).clamp(0, 1)


class XLDenoiser(Denoiser):
    """SDXL: the UNet also takes `text_embeds` (the second encoder's pooled embedding) and `time_ids`
    (original size, crop corner, target size: the image's size, (0, 0), the image's size, as the stock
    pipeline's defaults). The unconditional prompt is zeros when the pipeline says so
    (`force_zeros_for_empty_prompt`, as the stock pipeline does without a negative prompt)."""

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Cond, Cond]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts, device=self.device, do_classifier_free_guidance=False
        )
        if self.pipe.config.force_zeros_for_empty_prompt:
            uncond = Cond(embeds=torch.zeros_like(embeds[:1]), pooled=torch.zeros_like(pooled[:1]))
        else:
            empty, _, empty_pooled, _ = self.pipe.encode_prompt(
                [""], device=self.device, do_classifier_free_guidance=False
            )
            uncond = Cond(embeds=empty, pooled=empty_pooled)
        return Cond(embeds=embeds, pooled=pooled), uncond

    def call(self, model: torch.nn.Module, latents: Tensor, t: Tensor, cond: Cond) -> Tensor:
        height, width = (side * self.pipe.vae_scale_factor for side in latents.shape[-2:])
        time_ids = latents.new_tensor([height, width, 0, 0, height, width]).expand(latents.shape[0], 6)
        added = {"text_embeds": cond["pooled"], "time_ids": time_ids}
        return model(latents, t, encoder_hidden_states=cond["embeds"], added_cond_kwargs=added).sample
