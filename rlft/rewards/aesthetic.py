"""The LAION aesthetic predictor: a CLIP ViT-L/14 image embedding, normalised, then a small MLP head.

The head is the improved-aesthetic-predictor's (github.com/christophschuhmann/improved-aesthetic-predictor,
`sac+logos+ava1-l14-linearMSE.pth`): Linear layers 768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropout between
and no activations, as ddpo-pytorch, D3PO and TRL's DDPO example use it; it predicts a 1-10 rating. Unlike
those, which run CLIPProcessor on PIL images under no_grad, the preprocessing here (`clip_preprocess`) is
torch ops on the image tensor, so the score is differentiable and DRaFT can use it.

Weights: `aesthetic` takes CLIP from the hub (`openai/clip-vit-large-patch14`) and the head from TRL's copy
(`trl-lib/ddpo-aesthetic-predictor`, `aesthetic-model.pth`); `aesthetic:<folder>` reads a folder holding a
transformers CLIP model (`config.json` and `model.safetensors` or `pytorch_model.bin`, as `save_pretrained`
writes them; a full CLIPModel or a CLIPVisionModelWithProjection) and the head as HEAD_FILE. Weights load
on the first call, once per process, and follow the images to their device.
"""

import contextlib
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HUB_CLIP = "openai/clip-vit-large-patch14"
HUB_HEAD = ("trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth")
HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
CLIP_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# OpenAI CLIP's normalisation, which CLIPProcessor and ImageReward's preprocessing both use.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: Tensor, size: int = 224) -> Tensor:
    """CLIP's preprocessing as differentiable torch ops: images (B, 3, H, W) in [0, 1] -> (B, 3, size, size).

    Resize the short side to `size` (bicubic with antialiasing, which matches PIL's bicubic to about 1e-3
    on average), center-crop, normalise. PIL clips the resized image to [0, 1]; so does this.
    """
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    resized_h, resized_w = max(size, int(height * scale)), max(size, int(width * scale))
    size_hw = (resized_h, resized_w)
    images = F.interpolate(images, size_hw, mode="bicubic", antialias=True, align_corners=False)
    top, left = round((resized_h - size) / 2), round((resized_w - size) / 2)
    images = images[..., top : top + size, left : left + size].clamp(0, 1)
    mean = images.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


class AestheticHead(nn.Module):
    """The improved-aesthetic-predictor MLP; parameter names match its weight file (`layers.0.weight`...)."""

    def __init__(self, embed_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: Tensor) -> Tensor:
        return self.layers(embeds)


class AestheticPredictor(nn.Module):
    """The CLIP image embedding, L2-normalised, through the head: images (B, 3, H, W) in [0, 1] -> (B,)."""

    def __init__(self, clip: nn.Module, head: AestheticHead):
        super().__init__()
        self.clip, self.head = clip, head

    def forward(self, images: Tensor) -> Tensor:
        pixels = clip_preprocess(images, self.clip.config.image_size)
        embeds = self.clip(pixel_values=pixels).image_embeds  # (B, projection_dim)
        embeds = embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True)
        return self.head(embeds).squeeze(1)


def check_folder(folder: str) -> None:
    """Raise ValueError naming the folder and the files expected when it cannot hold the predictor."""
    path = Path(folder)
    expected = f"config.json, {' or '.join(CLIP_WEIGHTS)} (a transformers CLIP model) and {HEAD_FILE}"
    where = f"reward 'aesthetic': folder {folder!r}"
    if not path.is_dir():
        raise ValueError(f"{where} does not exist; expected {expected}")
    missing = [name for name in ("config.json", HEAD_FILE) if not (path / name).is_file()]
    if not any((path / name).is_file() for name in CLIP_WEIGHTS):
        missing.append(" or ".join(CLIP_WEIGHTS))
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}; expected {expected}")


@contextlib.contextmanager
def hub_download(reward: str, sources: str):
    """Loading `reward`'s weights from the hub (or its cache): a failure (no network, nothing cached) becomes
    an OSError that names the reward, what it fetches and the offline way round it."""
    try:
        yield
    except OSError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(
            f"reward {reward!r}: cannot load {sources} from the Hugging Face hub or its cache ({first}); "
            f"with no network, copy the weights to a folder and use {reward}:<folder> (docs/rewards.md)"
        ) from error


def vision_config(source: str):
    """The vision config of a CLIP model: a CLIPModel checkpoint's vision half loads into
    CLIPVisionModelWithProjection (its text weights skipped), but its vision config may lack the projection
    width, which the CLIPModel config holds at the top level."""
    from transformers import AutoConfig, CLIPConfig

    config = AutoConfig.from_pretrained(source)
    if isinstance(config, CLIPConfig):
        config.vision_config.projection_dim = config.projection_dim
        return config.vision_config
    return config


@functools.cache
def load_predictor(folder: str | None) -> AestheticPredictor:
    """The predictor from `folder` (or the hub), on the CPU, eval mode, weights frozen; once per process."""
    from transformers import CLIPVisionModelWithProjection

    if folder is None:
        from huggingface_hub import hf_hub_download

        with hub_download("aesthetic", f"{HUB_CLIP} and {HUB_HEAD[0]}"):
            head_file = hf_hub_download(*HUB_HEAD)
            clip = CLIPVisionModelWithProjection.from_pretrained(HUB_CLIP, config=vision_config(HUB_CLIP))
    else:
        check_folder(folder)
        head_file = str(Path(folder) / HEAD_FILE)
        clip = CLIPVisionModelWithProjection.from_pretrained(folder, config=vision_config(folder))
    head = AestheticHead(clip.config.projection_dim)
    head.load_state_dict(torch.load(head_file, map_location="cpu", weights_only=True))
    return AestheticPredictor(clip, head).eval().requires_grad_(False)


def save_folder(folder: str | Path, predictor: AestheticPredictor) -> None:
    """Write `predictor` as a folder `aesthetic:<folder>` loads (used to make random-weight test folders)."""
    path = Path(folder)
    predictor.clip.save_pretrained(path)
    torch.save(predictor.head.state_dict(), path / HEAD_FILE)


class AestheticScore:
    """The reward: fn(images (B, 3, H, W) in [0, 1], prompts ignored) -> (B,), differentiable.

    Holds only the folder name (cheap to build and to pickle); the weights load on the first call.
    """

    def __init__(self, folder: str | None):
        self.folder = folder

    def __call__(self, images: Tensor, prompts: list[str] | None = None) -> Tensor:
        predictor = load_predictor(self.folder).to(images.device)
        return predictor(images.to(next(predictor.parameters()).dtype))
