"""What a config may check about a model and its adapter without loading either: the built-in model names,
a hub id's form, a pipeline folder's model_index.json, the default LoRA targets.

Imports no torch, diffusers or peft (those take seconds per process), so a bad flag is refused at once.
"""

import json
import re
from pathlib import Path

BUILTIN_MODELS = (
    "tiny",
    "tiny-random",
    "sd15-random",
    "tiny-sdxl",
    "tiny-sd3",
    "tiny-flux",
    "sd35-random",
    "flux-random",
)
GPU_ONLY_MODELS = ("sd35-random", "flux-random")  # 13-17 B parameters: refused on a CPU
# The attention projections of the UNet, and of SD3's transformer (its image stream; the text stream's are
# add_q_proj, add_k_proj, add_v_proj and to_add_out).
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# Hub ids are "owner/name" with letters, digits, '-', '_' and '.' (huggingface_hub's own rule).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")

# The pipeline classes rlft trains (rlft/families/registry.py), and the parts training loads from each.
_TWO_ENCODERS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
PIPELINE_PARTS = {
    "StableDiffusionPipeline": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "StableDiffusionXLPipeline": ("unet", *_TWO_ENCODERS),
    "StableDiffusion3Pipeline": ("transformer", *_TWO_ENCODERS),
    "FluxPipeline": ("transformer", *_TWO_ENCODERS),
}
SUPPORTED_PIPELINES = tuple(PIPELINE_PARTS)


def check_pipeline_class(name: str, where: str) -> None:
    """A ValueError naming the pipeline class and the supported ones when rlft cannot train it."""
    if name not in PIPELINE_PARTS:
        raise ValueError(
            f"{where}: pipeline class {name} is not supported; supported: {', '.join(SUPPORTED_PIPELINES)}"
        )


def check_pipeline_folder(path: Path, name: str) -> None:
    """A ValueError naming the folder when its model_index.json cannot describe a loadable pipeline (not
    JSON, a class rlft does not train, or a part training needs missing from it or from the folder): found
    before any run is opened."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"model folder {name!r}: model_index.json is not JSON ({error})") from None
    if not isinstance(index, dict):
        raise ValueError(f"model folder {name!r}: model_index.json is not a JSON object")
    class_name = index.get("_class_name", "StableDiffusionPipeline")
    check_pipeline_class(str(class_name), f"model folder {name!r}")
    missing = [
        part
        for part in PIPELINE_PARTS[class_name]
        if not isinstance(index.get(part), list) or not (path / part).is_dir()
    ]
    if missing:
        raise ValueError(
            f"model folder {name!r} is not a loadable pipeline: no {', '.join(missing)} in its "
            "model_index.json or as subfolders"
        )


def check_model_name(name: str) -> str:
    """The kind of model `name` is (one of BUILTIN_MODELS, "tiny-folder" (a folder written by
    jobs/pretrain_tiny.py), "folder" or "hub"), or a ValueError saying why."""
    if name in BUILTIN_MODELS:
        return name
    if not name.strip():
        raise ValueError(
            f"model name is empty: use one of {', '.join(BUILTIN_MODELS)}, a pipeline folder or a hub id"
        )
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "model.json").is_file() and (path / "unet.safetensors").is_file():
            return "tiny-folder"  # written by jobs/pretrain_tiny.py
        if not (path / "model_index.json").is_file():
            raise ValueError(
                f"model folder {name!r} has no model_index.json: not a diffusers pipeline folder"
            )
        check_pipeline_folder(path, name)
        return "folder"
    # A path-like name, or more than one '/' (a hub id has exactly one), can only be a missing folder.
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ValueError(f"model folder {name!r} does not exist")
    if not _HUB_ID.match(name) or ".." in name or name.endswith(".git"):
        raise ValueError(
            f"model {name!r} is not allowed: use one of {', '.join(BUILTIN_MODELS)}, an existing pipeline "
            "folder, or a hub id like 'stable-diffusion-v1-5/stable-diffusion-v1-5'"
        )
    return "hub"
