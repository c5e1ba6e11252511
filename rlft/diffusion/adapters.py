"""Reading an adapter folder written by `Policy.save` (diffusers' LoRA format) back into a `Policy`.

A D3PO run ends with `runs/<run>/adapter/pytorch_lora_weights.safetensors`: diffusers-named LoRA weights
(`unet.<module>.lora.down.weight`) with the peft config in the file's metadata. A stock pipeline loads it
with `pipe.load_lora_weights(folder)`; here it goes back into our own `Policy`, so that sampling the next
labelling round and training on it use the very same UNet-with-adapter as the D3PO job.
"""

import hashlib
import json
from pathlib import Path

from diffusers.utils import convert_unet_state_dict_to_peft
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from rlft.diffusion.policy import ADAPTER_FILE, Policy


def adapter_file(folder: str | Path) -> Path:
    """The weights file in an adapter folder, or a ValueError naming the folder."""
    path = Path(folder) / ADAPTER_FILE
    if not path.is_file():
        raise ValueError(
            f"adapter folder {str(folder)!r} has no {ADAPTER_FILE}: expected a LoRA adapter as the D3PO job "
            "writes it (runs/<run>/adapter); fully fine-tuned UNets are not supported here"
        )
    return path


def adapter_lora_shape(folder: str | Path) -> dict:
    """The LoRA shape the adapter was trained with: {"lora_rank", "lora_alpha", "lora_targets"}.

    Read from the peft config diffusers stores in the file's metadata, so the caller builds a matching
    policy without being told the rank.
    """
    with safe_open(adapter_file(folder), "pt") as f:
        metadata = (f.metadata() or {}).get("lora_adapter_metadata")
    if metadata is None:
        raise ValueError(f"adapter folder {str(folder)!r}: the weights file carries no LoRA config metadata")
    config = {k.removeprefix("unet."): v for k, v in json.loads(metadata).items()}
    return {
        "lora_rank": int(config["r"]),
        "lora_alpha": float(config["lora_alpha"]),
        "lora_targets": tuple(sorted(config["target_modules"])),
    }


def adapter_state(folder: str | Path) -> dict[str, Tensor]:
    """The adapter's weights as `Policy.state_dict` gives them (peft names), for `Policy.load_state_dict`."""
    state = load_file(adapter_file(folder))
    state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    return convert_unet_state_dict_to_peft(state)


def load_adapter(policy: Policy, folder: str | Path) -> None:
    """Put the adapter's weights into `policy` (whose LoRA shape must match: see `adapter_lora_shape`)."""
    try:
        policy.load_state_dict(adapter_state(folder))
    except (RuntimeError, ValueError) as error:  # shapes of another model, or modules it lacks
        raise ValueError(f"adapter folder {str(folder)!r} does not fit this model: {error}") from error


def adapter_digest(folder: str | Path) -> str:
    """sha256 of the adapter's weights: which adapter a batch came from, even if the folder is reused."""
    return hashlib.sha256(adapter_file(folder).read_bytes()).hexdigest()
