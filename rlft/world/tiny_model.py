"""The Stable Diffusion 1.x-shaped models rlft builds offline, and the tiny parts the other families share.

"tiny" is pretrained on rlft/world/scenes.py's captioned shapes (rlft/world/pretrain.py) and ships
with the package as safetensors (`load_tiny_pretrained`); "tiny-random" is the same architecture with random
weights (noise in, noise out), for tests that need only speed; "sd15-random" is Stable Diffusion 1.5's
architecture with random weights, for GPU speed and memory work. rlft/zoo/loading.py loads any model
by name.
"""

import json
import tempfile
from importlib.resources import files
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# The pretrained tiny model's weights, inside the package (written by jobs/pretrain_tiny.py).
TINY_MODEL_FOLDER = files("rlft.world") / "tiny_weights"
# Stable Diffusion 1.x's noise schedule, which every pipeline built here uses (and the tiny model learned).
TINY_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
)

# The prompts the tiny tokenizer is trained on; any other prompt still tokenizes (down to bytes).
TINY_TOKENIZER_TEXT = (
    "a photo of a cat dog horse monkey rabbit zebra spider bird sheep deer cow goat lion frog chicken duck "
    "goose bee pig turkey fly llama camel bat gorilla hedgehog kangaroo an the painting picture of in on with"
)


def assemble_sd(unet, vae, text_encoder, tokenizer) -> StableDiffusionPipeline:
    """A pipeline from built parts, with Stable Diffusion 1.x's noise schedule and no safety checker."""
    scheduler = DDIMScheduler(**TINY_SCHEDULER, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_tokenizer(text: str = TINY_TOKENIZER_TEXT) -> CLIPTokenizer:
    """A CLIP tokenizer for the words of `text`, built offline and identically every time.

    The vocabulary holds every byte symbol (CLIP's byte-to-unicode table, plain and word-final), so any
    prompt tokenizes; each listed word adds left-to-right merges, so most become one token. (BPE trained
    with `tokenizers` breaks ties between equally frequent pairs differently from run to run: not used.)
    """
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in sorted(set(text.split())):
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merge, merged = f"{parts[0]} {parts[1]}", parts[0] + parts[1]
            if merged not in vocab:
                merges.append(merge)
                vocab.append(merged)
            parts = [merged, *parts[2:]]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
        # CLIPTokenizer skips the first line of merges.txt (a version header).
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(
            str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt"), model_max_length=77
        )


WIDTH = 32  # the tiny text encoders' width, and their pooled projections'
# The tiny UNet over 16x16x4 latents (1 M parameters with cross-attention of width 32), which tiny-sdxl's
# UNet extends with SDXL's added conditioning.
TINY_UNET = dict(
    sample_size=16,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=4,
    norm_num_groups=8,
)


def clip_config(vocab_size: int) -> CLIPTextConfig:
    """A two-layer CLIP text encoder of width 32 for the tiny tokenizer (whose last two tokens are the start
    and end of text)."""
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=WIDTH,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def tiny_vae(seed: int, scaling_factor: float, shift_factor: float | None = None) -> AutoencoderKL:
    """The tiny two-block VAE (32x32 images, 16x16x4 latents), random weights from `seed`."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def tiny_parts(
    vocab_size: int, seed: int = 0, scaling_factor: float = 0.18215
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """The tiny architecture, random weights from `seed`: a 1 M-parameter UNet over 16x16x4 latents, a
    two-block VAE for 32x32 images and a two-layer CLIP text encoder of width 32."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET, cross_attention_dim=WIDTH)
    vae = tiny_vae(seed + 1, scaling_factor)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(clip_config(vocab_size))
    return unet, vae, text_encoder


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """The tiny architecture with random weights from `seed` ("tiny-random"): 32x32 images of noise.

    32x32 rather than 16x16: a 16x16 JPEG is mostly header (its size varies by a few bytes between samples),
    too little signal for the compressibility reward to train on in minutes (measured; docs/tiny-model.md).
    """
    tokenizer = build_tiny_tokenizer()
    return assemble_sd(*tiny_parts(len(tokenizer), seed), tokenizer)


def load_tiny_pretrained(folder: str | Path | None = None) -> StableDiffusionPipeline:
    """The pretrained tiny model ("tiny"): `tiny_parts` filled with the weights in `folder` (default: the
    package's own, rlft/world/tiny_weights), every tensor checked by name and shape."""
    from safetensors.torch import load_file

    from rlft.world.scenes import caption_vocabulary

    folder = Path(folder) if folder is not None else Path(str(TINY_MODEL_FOLDER))
    record = folder / "model.json"
    if not record.is_file():
        raise ValueError(f"model 'tiny': {record} is missing; make it with jobs/pretrain_tiny.py")
    scaling_factor = json.loads(record.read_text())["scaling_factor"]
    tokenizer = build_tiny_tokenizer(caption_vocabulary())
    parts = tiny_parts(len(tokenizer), 0, scaling_factor)
    for name, module in zip(("unet", "vae", "text_encoder"), parts, strict=True):
        module.load_state_dict(load_file(str(folder / f"{name}.safetensors")), strict=True)
    return assemble_sd(*parts, tokenizer)
