"""Tiny random pipelines of the newer families, built offline from configs: tiny-sdxl, tiny-sd3, tiny-flux.

Each has the family's real structure at a width of 32 (so the stock pipeline classes, their
`load_lora_weights` and rlft's training code meet every part they would meet at full size) and makes 32x32
images, like "tiny-random" (rlft/world/tiny_model.py). Their weights are random from `seed`: their images
are noise, but a reward with range on noise (brightness) still moves under training. Every tokenizer is the
tiny one, built locally.

- tiny-sdxl: a UNet with SDXL's added conditioning (the pooled embedding of the second text encoder and six
  time ids), two CLIP text encoders (the second with a projection), DDIM on Stable Diffusion's schedule.
- tiny-sd3: an `SD3Transformer2DModel` (joint attention over the text and image tokens), two CLIP text
  encoders with projections and no T5 (as diffusers allows; the T5 part of the sequence is then zeros), a
  VAE with SD3's scaling and shift factors, and `FlowMatchEulerDiscreteScheduler` with SD3's shift of 3.
- tiny-flux: a `FluxTransformer2DModel` with FLUX.1-dev's guidance embedding (one double-stream and one
  single-stream block), a CLIP text encoder for the pooled embedding and a two-layer T5 encoder with a
  word-level tokenizer of the prompt sets' words built locally (T5's own needs a download), FLUX.1-dev's
  resolution-dependent shift of the sigmas, and the VAE with FLUX's factors.
"""

import torch
from diffusers import (
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from rlft.world.tiny_model import (
    TINY_SCHEDULER,
    TINY_UNET,
    WIDTH,
    build_tiny_tokenizer,
    clip_config,
    tiny_vae,
)


def evaluating(pipe):
    """`pipe` with every module in eval mode, as `from_pretrained` returns them (T5's dropout is 0.1)."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe


def build_tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """ "tiny-sdxl": SDXL's structure at width 32, random weights from `seed`."""
    tokenizer = build_tiny_tokenizer()
    time_embed_dim = 8  # per time id; SDXL's UNet embeds six of them beside the pooled text embedding
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **TINY_UNET,
        cross_attention_dim=2 * WIDTH,  # the two encoders' hidden states, concatenated
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + WIDTH,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(clip_config(len(tokenizer)))
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(len(tokenizer)))
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(seed + 1, scaling_factor=0.13025),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**TINY_SCHEDULER, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        force_zeros_for_empty_prompt=True,
    )
    return evaluating(pipe)


def build_tiny_sd3(seed: int = 0, with_t5: bool = False) -> StableDiffusion3Pipeline:
    """tiny-sd3: Stable Diffusion 3's structure at width 32, random weights from `seed`; without T5 (as
    "tiny-sd3" is) unless `with_t5`, which adds a two-layer T5 of the joint width as the third encoder."""
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=2 * WIDTH,  # the two CLIP encoders' hidden states, concatenated
        caption_projection_dim=WIDTH,
        pooled_projection_dim=2 * WIDTH,  # their pooled embeddings, concatenated
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModelWithProjection(clip_config(len(tokenizer)))
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(len(tokenizer)))
    t5, t5_tokenizer = tiny_t5(2 * WIDTH) if with_t5 else (None, None)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(seed + 1, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
    )
    return evaluating(pipe)


def build_t5_tokenizer() -> T5TokenizerFast:
    """A word-level T5 tokenizer for the prompt sets' words (others become <unk>), ending each text with </s>
    as T5's does; built locally, identically every time."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from rlft.prompts import PROMPT_SETS

    words = sorted({w for prompts in PROMPT_SETS.values() for p in prompts for w in p.lower().split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {word: i + 3 for i, word in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tokenizer, extra_ids=0, eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def tiny_t5(width: int) -> tuple[T5EncoderModel, T5TokenizerFast]:
    """A two-layer T5 encoder of `width` (random weights from the global generator) and its tokenizer."""
    tokenizer = build_t5_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    return T5EncoderModel(config), tokenizer


def flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1-dev's scheduler: shift 3, and sigmas shifted by the image's token count (256 to 4096 tokens
    map to shifts of 0.5 to 1.15)."""
    return FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def build_tiny_flux(seed: int = 0) -> FluxPipeline:
    """tiny-flux: FLUX.1-dev's structure at width 32, random weights from `seed`; 32x32 images by default."""
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * 4,  # 2x2 patches of 4-channel latents
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=WIDTH,  # T5's width
        pooled_projection_dim=WIDTH,  # CLIP's
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),  # sums to the head width
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(clip_config(len(tokenizer)))
    t5, t5_tokenizer = tiny_t5(WIDTH)
    pipe = FluxPipeline(
        scheduler=flux_scheduler(),
        vae=tiny_vae(seed + 1, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipe.default_sample_size = 16  # 32x32 images, as the other tiny models (FluxPipeline's default is 128)
    return evaluating(pipe)


TINY_FAMILIES = {"tiny-sdxl": build_tiny_sdxl, "tiny-sd3": build_tiny_sd3, "tiny-flux": build_tiny_flux}
