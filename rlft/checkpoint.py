"""Checkpoints: everything a run needs to go on exactly where it stopped, written atomically each epoch.

A checkpoint folder holds the trained weights and the optimizer state (`state.pt`, loaded with
`weights_only=True`: tensors and plain values, no code), the last finished epoch and the metrics of every
finished epoch, plus the adapter in diffusers' format for people (`adapter/`). No random generator state is
needed: every epoch seeds its own streams (rlft/epoch.py). It is written to a temporary folder and renamed
over the old one, so a crash leaves the previous checkpoint whole.
"""

import shutil
from pathlib import Path

import torch

STATE_FILE = "state.pt"


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write {relative path: bytes} under `folder` (an adapter as `Policy.adapter_files` gives it)."""
    for name, data in files.items():
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def save_checkpoint(
    folder: Path,
    *,
    epoch: int,
    history: list[dict[str, float]],
    state: dict,
    adapter: dict[str, bytes],
) -> None:
    """state: {"weights": the trained weights, "optimizer": the optimizer's state dict}."""
    folder = Path(folder)
    staging, previous = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_files(staging / "adapter", adapter)
    torch.save({"epoch": epoch, "history": history, **state}, staging / STATE_FILE)
    shutil.rmtree(previous, ignore_errors=True)
    if folder.exists():
        folder.rename(previous)
    staging.rename(folder)
    shutil.rmtree(previous, ignore_errors=True)


def load_checkpoint(folder: Path) -> tuple[int, list[dict[str, float]], dict | None]:
    """(last finished epoch, history, {"weights", "optimizer"}), or (-1, [], None) if there is none."""
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file():
        previous = folder.with_name(folder.name + ".old")  # a crash between the two renames
        if not (previous / STATE_FILE).is_file():
            return -1, [], None
        folder = previous
    state = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
    epoch, history = state.pop("epoch"), state.pop("history")
    return epoch, history, state
