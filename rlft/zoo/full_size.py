"""Full-size random pipelines for GPU memory and speed work: "sd15-random", "sd35-random" and "flux-random".

Stable Diffusion 3.5 Large and FLUX.1-dev at their published shapes (the configs below are those of their
hub folders' config.json files), with random weights from a seed: nothing is downloaded, so they measure
memory and time, not image quality. Every part is created directly on the target device in the target
dtype (an 8 B-parameter transformer in float32 on a CPU first would need 32 GB). The tokenizers are the
tiny, local ones (rlft/world/tiny_model.py and rlft/zoo/tiny_sdxl_sd3_flux.py); their ids index the real
embedding tables, and the text sequences are padded to the real lengths (77 for CLIP; T5: 256 for SD3, 512
for FLUX), so the activations have the real sizes.

- sd35-random: an 8.1 B-parameter `SD3Transformer2DModel` (38 layers of 38 heads x 64), CLIP ViT-L/14 and
  OpenCLIP bigG/14 text encoders with projections, the T5-XXL encoder (4.8 B) unless `with_t5=False` (as
  diffusers allows; the T5 part of the sequence is then zeros), the 16-channel VAE with SD3's factors, and
  `FlowMatchEulerDiscreteScheduler` with shift 3. 1024x1024 images.
- flux-random: an 11.9 B-parameter `FluxTransformer2DModel` (19 double-stream and 38 single-stream blocks
  of 24 heads x 128, the guidance embedding of FLUX.1-dev), CLIP ViT-L/14 for the pooled embedding, T5-XXL,
  the VAE with FLUX's factors and its resolution-dependent shift. 1024x1024 images.
"""

from contextlib import contextmanager

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from rlft.world.tiny_model import assemble_sd, build_tiny_tokenizer
from rlft.zoo.tiny_sdxl_sd3_flux import build_t5_tokenizer, evaluating, flux_scheduler

# Stable Diffusion's VAE (its latent channels and size differ: 4 in SD 1.x, 16 in SD3 and FLUX) and the CLIP
# ViT-L/14 text encoder of SD 1.x, SD3 and FLUX.
SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
)
CLIP_L = dict(
    hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768
)


def build_sd15_random_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Stable Diffusion 1.5's architecture (860 M-parameter UNet, 512x512 images) with random weights.

    For GPU speed and memory measurements only: nothing is downloaded, so the tokenizer is the tiny one
    (ids still index the real 49408-entry embedding table).
    """
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**SD_VAE, latent_channels=4, sample_size=512)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", **CLIP_L)
    )
    return assemble_sd(unet, vae, text_encoder, tokenizer)


SD35_LARGE_TRANSFORMER = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=38,
    attention_head_dim=64,
    num_attention_heads=38,
    joint_attention_dim=4096,
    caption_projection_dim=2432,
    pooled_projection_dim=2048,
    pos_embed_max_size=192,
    qk_norm="rms_norm",
)
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
# The 16-channel VAE of SD3 and FLUX (their scaling and shift factors differ).
VAE_16 = SD_VAE | dict(latent_channels=16, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False)
CLIP_BIG_G = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    projection_dim=1280,
    hidden_act="gelu",
)
T5_XXL = dict(
    vocab_size=32128,
    d_model=4096,
    d_ff=10240,
    d_kv=64,
    num_heads=64,
    num_layers=24,
    feed_forward_proj="gated-gelu",
)


@contextmanager
def creating_on(device: str | torch.device, dtype: torch.dtype):
    """New parameters are created on `device` in `dtype` inside the block ("meta": no memory at all)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(before)


def clip_encoder(shape: dict, tokenizer, projection: bool = True):
    """A CLIP text encoder of `shape` over the real 49408-token vocabulary; start and end of text are the
    tiny tokenizer's (the pooled embedding is read at its end-of-text token)."""
    config = CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act=shape.get("hidden_act", "quick_gelu"),
        bos_token_id=len(tokenizer) - 2,
        eos_token_id=len(tokenizer) - 1,
        pad_token_id=len(tokenizer) - 1,
        **{k: v for k, v in shape.items() if k != "hidden_act"},
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def build_sd35_random(
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    with_t5: bool = True,
) -> StableDiffusion3Pipeline:
    """sd35-random: Stable Diffusion 3.5 Large's shapes, random weights from `seed`, created on `device` in
    `dtype`; without the T5 encoder when not `with_t5`."""
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    with creating_on(device, dtype):
        transformer = SD3Transformer2DModel(**SD35_LARGE_TRANSFORMER)
        vae = AutoencoderKL(**VAE_16, scaling_factor=1.5305, shift_factor=0.0609)
        text_encoder = clip_encoder(CLIP_L, tokenizer)
        text_encoder_2 = clip_encoder(CLIP_BIG_G, tokenizer)
        t5 = T5EncoderModel(T5Config(**T5_XXL)) if with_t5 else None
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=t5,
        tokenizer_3=build_t5_tokenizer() if with_t5 else None,
    )
    return evaluating(pipe)


def build_flux_random(
    seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16
) -> FluxPipeline:
    """flux-random: FLUX.1-dev's shapes, random weights from `seed`, created on `device` in `dtype`."""
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    with creating_on(device, dtype):
        transformer = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)
        vae = AutoencoderKL(**VAE_16, scaling_factor=0.3611, shift_factor=0.1159)
        text_encoder = clip_encoder(CLIP_L, tokenizer, projection=False)
        t5 = T5EncoderModel(T5Config(**T5_XXL))
    pipe = FluxPipeline(
        scheduler=flux_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=build_t5_tokenizer(),
        transformer=transformer,
    )
    return evaluating(pipe)


FULL_SIZE = {"sd35-random": build_sd35_random, "flux-random": build_flux_random}
