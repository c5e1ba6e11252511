"""What differs between the model families rlft trains, behind one interface: `denoiser_for(pipe)`.

Sampling, D3PO, DDPO and DRaFT are written once against a `Denoiser`: encode prompts into a `Cond`, call the
trainable model with classifier-free guidance, take a stochastic step with its log-probability, predict x_0,
re-noise, draw x_T, decode. Each family says how:

- Stable Diffusion 1.x/2.x (`StableDiffusionPipeline`): a UNet on CLIP text embeddings, DDIM
  (rlft/families/ddim.py; `eta` is DDIM's).
- SDXL (`StableDiffusionXLPipeline`): the UNet also takes the second text encoder's pooled embedding and the
  added time ids (original size, crop corner, target size), DDIM as above.
- Stable Diffusion 3.x (`StableDiffusion3Pipeline`): an `SD3Transformer2DModel` predicting the flow-matching
  velocity, on the joint CLIP(+T5) sequence and the pooled CLIP embeddings; the stochastic step is Flow-GRPO's
  SDE (rlft/families/flow_sde.py; `eta` is its noise level).
- FLUX.1 (`FluxPipeline`): a `FluxTransformer2DModel` on 2x2-packed latents with position ids, T5 embeddings
  and CLIP's pooled one; FLUX.1-dev is guidance-distilled (the guidance scale goes into an embedding, one
  model call, no unconditional half), FLUX.1-schnell takes no guidance. Its sigmas shift with the image's
  size, so `set_timesteps` takes the resolution. Latents stay unpacked (B, C, h, w) outside the model call,
  so the steps, log-probabilities and samples are the same code as SD3's.

The trainable model (`denoiser.model`) is the pipeline's UNet or transformer; callers pass the module to call
(the policy, or its reference with the adapter disabled), so the reference needs no second copy.
"""

from rlft.families.denoiser import Cond, Denoiser, XLDenoiser
from rlft.families.flow_denoisers import FluxDenoiser, SD3Denoiser

__all__ = ["Cond", "Denoiser", "XLDenoiser", "SD3Denoiser", "FluxDenoiser", "DENOISERS", "denoiser_for"]

DENOISERS = {
    "StableDiffusionPipeline": Denoiser,
    "StableDiffusionXLPipeline": XLDenoiser,
    "StableDiffusion3Pipeline": SD3Denoiser,
    "FluxPipeline": FluxDenoiser,
}


def denoiser_for(pipe) -> Denoiser:
    """The `Denoiser` of `pipe`'s family; a ValueError naming the class and the supported ones otherwise."""
    name = type(pipe).__name__
    if name not in DENOISERS:
        raise ValueError(f"pipeline class {name} is not supported; supported: {', '.join(DENOISERS)}")
    return DENOISERS[name](pipe)
