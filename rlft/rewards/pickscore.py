"""PickScore (Kirstain et al., arXiv 2305.01569): a CLIP-H model fine-tuned on Pick-a-Pic's human preferences.

The score of an image for its prompt is CLIP's: logit_scale.exp() times the cosine between the image's and the
prompt's projected embeddings, as the model card computes it (about 18-23 for real images; Flow-GRPO divides
it by 26). The model card preprocesses PIL images with the `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` processor;
here the image side is torch ops on the image tensor (`clip_preprocess`: the same resize, crop and OpenAI
normalisation), so the score is differentiable and DRaFT can ascend it. The prompt side runs under no_grad.

Weights: `pickscore` takes the model from the hub (`yuvalkirstain/PickScore_v1`) and the tokenizer from the
processor's repository; `pickscore:<folder>` reads a folder holding a transformers `CLIPModel` and its
tokenizer, as `save_pretrained` writes them (`save_folder` does both). Weights load on the first call, once
per process, and follow the images to their device.
"""

import functools
from pathlib import Path

import torch
from torch import Tensor, nn

from rlft.rewards.aesthetic import CLIP_WEIGHTS, clip_preprocess, hub_download

HUB_MODEL = "yuvalkirstain/PickScore_v1"
HUB_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # a fast tokenizer's file, or a slow one's vocabulary
MAX_TOKENS = 77
# PickScore's CLIP-H (laion/CLIP-ViT-H-14-laion2B-s32B-b79K): the text and vision towers, for `random_scorer`.
CLIP_H_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
CLIP_H_VISION = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16)
SMALL = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)


class PickScorer(nn.Module):
    """A CLIP model and its tokenizer: (images (B, 3, H, W) in [0, 1], B prompts) -> (B,) scores."""

    def __init__(self, clip: nn.Module, tokenizer):
        super().__init__()
        self.clip, self.tokenizer = clip, tokenizer

    @torch.no_grad()
    def text_embeds(self, prompts: list[str], device: torch.device) -> Tensor:
        """The prompts' projected text embeddings, L2-normalised: (B, projection_dim)."""
        tokens = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        ).to(device)
        embeds = self.clip.get_text_features(**tokens)
        return embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True)

    def forward(self, images: Tensor, prompts: list[str]) -> Tensor:
        pixels = clip_preprocess(images, self.clip.config.vision_config.image_size)
        image = self.clip.get_image_features(pixel_values=pixels)
        image = image / torch.linalg.vector_norm(image, dim=-1, keepdim=True)
        text = self.text_embeds(prompts, images.device).to(image.dtype)
        return self.clip.logit_scale.exp() * (image * text).sum(dim=-1)


def check_folder(folder: str) -> None:
    """Raise ValueError naming the folder and the files expected when it cannot hold PickScore."""
    path = Path(folder)
    expected = (
        f"config.json and {' or '.join(CLIP_WEIGHTS)} (a transformers CLIPModel) and its tokenizer "
        f"({' or '.join(TOKENIZER_FILES)})"
    )
    where = f"reward 'pickscore': folder {folder!r}"
    if not path.is_dir():
        raise ValueError(f"{where} does not exist; expected {expected}")
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    for names in (CLIP_WEIGHTS, TOKENIZER_FILES):
        if not any((path / name).is_file() for name in names):
            missing.append(" or ".join(names))
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}; expected {expected}")


@functools.cache
def load_scorer(folder: str | None) -> PickScorer:
    """PickScore from `folder` (or the hub), on the CPU, eval mode, weights frozen; once per process."""
    from transformers import AutoTokenizer, CLIPModel

    if folder is None:
        with hub_download("pickscore", f"{HUB_MODEL} and {HUB_PROCESSOR}'s tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(HUB_PROCESSOR)
            clip = CLIPModel.from_pretrained(HUB_MODEL)
    else:
        check_folder(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        clip = CLIPModel.from_pretrained(folder)
    return PickScorer(clip, tokenizer).eval().requires_grad_(False)


def save_folder(folder: str | Path, scorer: PickScorer) -> None:
    """Write `scorer` as a folder `pickscore:<folder>` loads (used to make random-weight test folders)."""
    scorer.clip.save_pretrained(folder)
    scorer.tokenizer.save_pretrained(folder)


def random_scorer(small: bool = True, seed: int = 0) -> PickScorer:
    """PickScore's architecture with random weights from `seed` (`small`: 2 layers, 32 wide, for tests; else
    CLIP-H, 986 M parameters), and a CLIP tokenizer built offline for the prompt sets' words (any other text
    still tokenizes, down to bytes). The scores mean nothing; the shapes, loading and gradients are real."""
    from transformers import CLIPConfig, CLIPModel

    from rlft.prompts import PROMPT_SETS
    from rlft.world.tiny_model import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(" ".join(p.lower() for ps in PROMPT_SETS.values() for p in ps))
    text = dict(
        **(SMALL if small else CLIP_H_TEXT),
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(**(SMALL if small else CLIP_H_VISION), image_size=224, patch_size=14)
    torch.manual_seed(seed)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32 if small else 1024)
    return PickScorer(CLIPModel(config), tokenizer).eval()


class PickScore:
    """The reward: fn(images (B, 3, H, W) in [0, 1], B prompts) -> (B,), differentiable in the images.

    Holds only the folder name (cheap to build and to pickle); the weights load on the first call.
    """

    def __init__(self, folder: str | None):
        self.folder = folder

    def __call__(self, images: Tensor, prompts: list[str] | None = None) -> Tensor:
        if prompts is None or len(prompts) != len(images):  # before loading: a caller learns it at once
            got = "no" if prompts is None else len(prompts)
            raise ValueError(
                f"pickscore scores each image against its prompt: {len(images)} images, {got} prompts"
            )
        scorer = load_scorer(self.folder).to(images.device)
        return scorer(images.to(next(scorer.parameters()).dtype), list(prompts))
