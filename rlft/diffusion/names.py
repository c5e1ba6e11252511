"""What a config may check about a model and its adapter without loading either: the built-in model names,
a hub id's form, a pipeline folder's model_index.json, the default LoRA targets.

Imports no torch, diffusers or peft (those take seconds per process), so a bad flag is refused at once.
"""

import json
import re
from pathlib import Path

BUILTIN_MODELS = ("tiny", "tiny-random", "sd15-random")
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the UNet's attention projections
# Hub ids are "owner/name" with letters, digits, '-', '_' and '.' (huggingface_hub's own rule).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")

PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")  # what training loads


def check_pipeline_folder(path: Path, name: str) -> None:
    """A ValueError naming the folder when its model_index.json cannot describe a loadable pipeline (not
    JSON, or a part training needs missing from it or from the folder): found before any run is opened."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"model folder {name!r}: model_index.json is not JSON ({error})") from None
    missing = [
        part
        for part in PIPELINE_PARTS
        if not isinstance(index, dict) or not isinstance(index.get(part), list) or not (path / part).is_dir()
    ]
    if missing:
        raise ValueError(
            f"model folder {name!r} is not a loadable pipeline: no {', '.join(missing)} in its "
            "model_index.json or as subfolders"
        )


def check_model_name(name: str) -> str:
    """The kind of model `name` is ("tiny", "tiny-random", "sd15-random", "tiny-folder" (a folder written by
    jobs/pretrain_tiny.py), "folder" or "hub"), or a ValueError saying why."""
    if name in BUILTIN_MODELS:
        return name
    if not name.strip():
        raise ValueError(
            "model name is empty: use 'tiny', 'tiny-random', 'sd15-random', a pipeline folder or a hub id"
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
            f"model {name!r} is not allowed: use 'tiny', 'tiny-random', 'sd15-random', an existing pipeline "
            "folder, "
            "or a hub id like 'stable-diffusion-v1-5/stable-diffusion-v1-5'"
        )
    return "hub"
