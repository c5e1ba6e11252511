"""ImageReward (Xu et al., arXiv 2304.05977) through the `image-reward` package's own model class and scoring.

The score is the package's `ImageReward.score_gard` (BLIP ViT-L image features, cross-attended by the BLIP
text encoder on the prompt, then its MLP head and normalisation), given
- the prompt tokenised by the model's BLIP tokenizer exactly as the package's `score` does it
  (padding to 35 tokens, truncation), and
- the package's preprocessing (resize to 224 bicubic, center crop, CLIP normalisation) done by
  `clip_preprocess` on the image tensor instead of torchvision on a PIL image, so gradients reach the images.

Weights: `imagereward` loads "ImageReward-v1.0" with the package's `ImageReward.load`; `imagereward:<folder>`
reads a folder holding `ImageReward.pt` and `med_config.json` into the package's `ImageReward` class, and
an optional `tokenizer/` subfolder (a `vocab.txt`) replaces the `bert-base-uncased` vocabulary the
package fetches from the hub, so a folder can work offline. Weights load on the first call, once per process.

Compatibility with transformers 4.57 (image-reward 1.5 was written for 4.2x) all lives in
`import_image_reward` and `bert_vocab_from` (transformers 4.57 moved three helpers it imports to
`transformers.pytorch_utils`).
"""

import contextlib
import functools
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from rlft.rewards.aesthetic import clip_preprocess, hub_download

HUB_NAME = "ImageReward-v1.0"
FILES = ("ImageReward.pt", "med_config.json")
TOKENIZER_DIR = "tokenizer"
MAX_PROMPT_TOKENS = 35  # what the package's `score` pads and truncates prompts to
# BLIP's med_config.json (BERT-base plus cross-attention to the 1024-wide ViT-L features after the
# package sets encoder_width), which ImageReward's hub folder also holds. Used to build random-weight models.
MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}


def import_image_reward():
    """The `ImageReward` package, importable under transformers 4.57 and harmless to the rest of the process.

    - Its BLIP text encoder imports `apply_chunking_to_forward`, `find_pruneable_heads_and_indices` and
      `prune_linear_layer` from `transformers.modeling_utils`; they now live in `transformers.pytorch_utils`,
      so they are re-exported first.
    - On import it silences every Python warning (`warnings.filterwarnings("ignore")` in BLIP/blip.py) and
      sets transformers' logging to errors only; both are put back as they were.
    """
    import transformers
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        if not hasattr(modeling_utils, name):
            setattr(modeling_utils, name, getattr(pytorch_utils, name))
    verbosity = transformers.logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # clip's pkg_resources deprecation notice
        import ImageReward
    transformers.logging.set_verbosity(verbosity)
    return ImageReward


@contextlib.contextmanager
def bert_vocab_from(source: str | Path | None) -> Iterator[None]:
    """While open, the package's BLIP tokenizer reads its BERT vocabulary from `source` (a folder with a
    vocab.txt) instead of `bert-base-uncased` on the hub; None changes nothing. The tokenizer is built as the
    package's `init_tokenizer` builds it: [DEC] as the BOS token, [ENC] as an extra special token."""
    if source is None:
        yield
        return
    from ImageReward.models.BLIP import blip_pretrain
    from transformers import BertTokenizer

    def init_tokenizer():
        tokenizer = BertTokenizer.from_pretrained(str(source))
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
        return tokenizer

    original = blip_pretrain.init_tokenizer
    blip_pretrain.init_tokenizer = init_tokenizer
    try:
        yield
    finally:
        blip_pretrain.init_tokenizer = original


def build_model(med_config: str | Path, vocab: str | Path | None = None) -> nn.Module:
    """The package's `ImageReward` with random weights, on the CPU, eval mode (tests, random folders)."""
    package = import_image_reward()
    with bert_vocab_from(vocab):
        return package.ImageReward(med_config=str(med_config), device="cpu").eval()


def check_folder(folder: str) -> None:
    """Raise ValueError naming the folder and the files expected when it cannot hold an ImageReward model."""
    path = Path(folder)
    expected = f"{' and '.join(FILES)} (and optionally {TOKENIZER_DIR}/vocab.txt)"
    where = f"reward 'imagereward': folder {folder!r}"
    if not path.is_dir():
        raise ValueError(f"{where} does not exist; expected {expected}")
    missing = [name for name in FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}; expected {expected}")


def _load_from_folder(folder: str) -> nn.Module:
    """As the package's `load` does for a checkpoint file, plus a check that the file held this model."""
    check_folder(folder)
    path = Path(folder)
    vocab = path / TOKENIZER_DIR if (path / TOKENIZER_DIR / "vocab.txt").is_file() else None
    model = build_model(path / "med_config.json", vocab)
    state = torch.load(path / "ImageReward.pt", map_location="cpu", weights_only=True)
    missing = model.load_state_dict(state, strict=False).missing_keys  # strict=False, as the package loads
    trained = ("mlp.", "blip.visual_encoder.", "blip.text_encoder.")
    missing = [k for k in missing if k.startswith(trained) and not k.endswith("position_ids")]
    if missing:
        raise ValueError(
            f"reward 'imagereward': {str(path / 'ImageReward.pt')!r} is not an ImageReward checkpoint; "
            f"it lacks {len(missing)} weights, such as {missing[0]!r}"
        )
    return model


@functools.cache
def load_model(folder: str | None) -> nn.Module:
    """The ImageReward model from `folder` (or the hub), on the CPU, eval mode, frozen; once per process."""
    if folder is None:
        with hub_download("imagereward", f"THUDM/ImageReward's {HUB_NAME} and bert-base-uncased"):
            model = import_image_reward().load(HUB_NAME, device="cpu")
    else:
        model = _load_from_folder(folder)
    return model.eval().requires_grad_(False)


def save_folder(folder: str | Path, model: nn.Module, med_config: dict | None = None) -> None:
    """Write `model` as a folder `imagereward:<folder>` loads, its tokenizer's vocabulary included."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "ImageReward.pt")
    (path / "med_config.json").write_text(json.dumps(med_config or MED_CONFIG, indent=2))
    (path / TOKENIZER_DIR).mkdir(exist_ok=True)
    model.blip.tokenizer.save_vocabulary(str(path / TOKENIZER_DIR))


def check_prompts(images: Tensor, prompts: list[str] | None) -> None:
    if prompts is None or len(prompts) != len(images):
        got = "no" if prompts is None else len(prompts)
        raise ValueError(
            f"imagereward scores each image against its prompt: {len(images)} images, {got} prompts"
        )


def score(model: nn.Module, images: Tensor, prompts: list[str]) -> Tensor:
    """ImageReward of images (B, 3, H, W) in [0, 1] for their prompts (B strings): (B,), differentiable."""
    check_prompts(images, prompts)
    model.device = images.device  # `score_gard` builds its attention mask on `model.device`
    tokenize = model.blip.tokenizer
    tokens = tokenize(list(prompts), padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS)
    ids = torch.tensor(tokens.input_ids, device=images.device)  # (B, 35)
    mask = torch.tensor(tokens.attention_mask, device=images.device)
    pixels = clip_preprocess(images, 224)  # (B, 3, 224, 224), the package's ViT-L input size
    return model.score_gard(ids, mask, pixels).squeeze(1)


class ImageRewardScore:
    """The reward: fn(images (B, 3, H, W) in [0, 1], prompts (B strings)) -> (B,), differentiable.

    Holds only the folder name (cheap to build and to pickle); the weights load on the first call.
    """

    def __init__(self, folder: str | None):
        self.folder = folder

    def __call__(self, images: Tensor, prompts: list[str] | None = None) -> Tensor:
        check_prompts(images, prompts)  # before loading: a caller that passes no prompts learns it at once
        model = load_model(self.folder).to(images.device)
        return score(model, images.to(next(model.parameters()).dtype), prompts)
