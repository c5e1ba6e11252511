"""Checkpoints: everything a run needs to go on exactly where it stopped, written atomically each epoch.

A checkpoint folder holds the trained weights (`state.pt`, loaded with `weights_only=True`: tensors and plain
values, no code), the optimizer state, the random generators' states, the last finished epoch and the
metrics of every finished epoch, plus the adapter in diffusers' format for people (`adapter/`). It is
written to a temporary folder and renamed over the old one, so a crash leaves the previous checkpoint whole.
"""

import shutil
from pathlib import Path

import torch

from rlft.policy import Policy

STATE_FILE = "state.pt"


def save_checkpoint(
    folder: Path,
    *,
    epoch: int,
    history: list[dict[str, float]],
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
) -> None:
    folder = Path(folder)
    staging, previous = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    policy.save(staging / "adapter")
    state = {
        "epoch": epoch,
        "history": history,
        "weights": policy.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    torch.save(state, staging / STATE_FILE)
    shutil.rmtree(previous, ignore_errors=True)
    if folder.exists():
        folder.rename(previous)
    staging.rename(folder)
    shutil.rmtree(previous, ignore_errors=True)


def load_checkpoint(
    folder: Path,
    *,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
) -> tuple[int, list[dict[str, float]]]:
    """Restore a checkpoint into the given objects: (last finished epoch, history), or (-1, []) if none."""
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file():
        previous = folder.with_name(folder.name + ".old")  # a crash between the two renames
        if not (previous / STATE_FILE).is_file():
            return -1, []
        folder = previous
    state = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
    policy.load_state_dict(state["weights"])
    optimizer.load_state_dict(state["optimizer"])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    return state["epoch"], state["history"]
