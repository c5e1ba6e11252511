"""Checkpoints: everything a run needs to go on exactly where it stopped, written atomically each epoch.

A checkpoint folder holds the trained weights and the optimizer state (`state.pt`, loaded with
`weights_only=True`: tensors and plain values, no code), the last finished epoch and the metrics of every
finished epoch, plus the adapter in diffusers' format for people (`adapter/`). No random generator state is
needed: every epoch seeds its own streams (rlft/epoch.py). It is written to a temporary folder and renamed
over the old one, so a crash leaves the previous checkpoint whole. With shared storage (rlft/runs/storage.py)
each checkpoint is also uploaded, and loading takes whichever of the local and the uploaded one is newer.
"""

import fcntl
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from rlft.runs.storage import RunStorage

STATE_FILE = "state.pt"
SETTINGS_FILE = "settings.json"  # the settings that define the run (RunConfig.defining_settings)
LOCK_FILE = ".lock"


class OtherRun(ValueError):
    """The run folder holds another run: its checkpoint was written with other defining settings."""


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write {relative path: bytes} under `folder` (an adapter as `Policy.adapter_files` gives it)."""
    for name, data in files.items():
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def staging_folder(folder: Path) -> Path:
    """An empty name beside `folder` to write its replacement under (a leftover of a crash removed)."""
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def replace_folder(folder: Path, staging: Path) -> None:
    """Put `staging` in the place of `folder`; at every moment one of the two names holds a whole one."""
    previous = folder.with_name(folder.name + ".old")
    shutil.rmtree(previous, ignore_errors=True)
    if folder.exists():
        folder.rename(previous)
    staging.rename(folder)
    shutil.rmtree(previous, ignore_errors=True)


def save_checkpoint(
    folder: Path,
    *,
    epoch: int,
    history: list[dict[str, float]],
    state: dict,
    adapter: dict[str, bytes],
    storage: RunStorage | None = None,
    settings: dict | None = None,
) -> None:
    """state: {"weights": the trained weights, "optimizer": the optimizer's state dict}; settings: what
    defines the run, kept beside it. With `storage`, the checkpoint is uploaded too (an upload failure
    raises, after the local checkpoint is written)."""
    folder = Path(folder)
    staging = staging_folder(folder)
    staging.mkdir(parents=True)
    write_files(staging / "adapter", adapter)
    if settings is not None:
        (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=1, sort_keys=True))
    torch.save({"epoch": epoch, "history": history, **state}, staging / STATE_FILE)
    replace_folder(folder, staging)
    if storage is not None:
        storage.upload_checkpoint(folder, epoch)


def _local(folder: Path) -> Path | None:
    """The folder holding the local checkpoint, if there is one."""
    if (folder / STATE_FILE).is_file():
        return folder
    previous = folder.with_name(folder.name + ".old")  # a crash between the two renames
    return previous if (previous / STATE_FILE).is_file() else None


def check_same_run(folder: Path, settings: dict, run_name: str) -> None:
    """OtherRun naming each changed setting, with both values, when the checkpoint in `folder` was written
    by a run with other defining settings (a checkpoint from before they were recorded is not checked)."""
    found = _local(Path(folder))
    if found is None or not (found / SETTINGS_FILE).is_file():
        return
    recorded = json.loads((found / SETTINGS_FILE).read_text())
    changed = [
        f"{key} was {recorded.get(key)!r}, now {settings.get(key)!r}"
        for key in sorted(recorded.keys() | settings.keys())
        if recorded.get(key) != settings.get(key)
    ]
    if changed:
        raise OtherRun(
            f"run_name={run_name!r} holds a run with other settings ({'; '.join(changed)}): give the old "
            "values to resume it, or another --run-name to start a new run"
        )


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold run_dir's lock while a job trains it: a second job on the same run is refused, not interleaved.
    The kernel releases it when the process ends, however it ends."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a")  # noqa: SIM115 (held for the block)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ValueError(
            f"run_name={run_dir.name!r} is in use: another job is training {run_dir} now; wait for it to end "
            "or give another --run-name"
        ) from None
    try:
        yield
    finally:
        handle.close()


def _read(folder: Path | None) -> tuple[int, list[dict[str, float]], dict | None]:
    if folder is None:
        return -1, [], None
    state = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
    epoch, history = state.pop("epoch"), state.pop("history")
    return epoch, history, state


def load_checkpoint(
    folder: Path, storage: RunStorage | None = None
) -> tuple[int, list[dict[str, float]], dict | None]:
    """(last finished epoch, history, {"weights", "optimizer"}), or (-1, [], None) if there is none.

    With `storage`, the newer of the local and the uploaded checkpoint: an uploaded one that is newer (a new
    head node, a lost disk) is downloaded into `folder` first; a local one that is newer (its upload failed)
    is uploaded now.
    """
    folder = Path(folder)
    found = _local(folder)
    epoch, history, state = _read(found)
    if storage is None:
        return epoch, history, state
    uploaded = storage.newest_epoch()
    if uploaded > epoch:
        staging = staging_folder(folder)
        storage.download_checkpoint(uploaded, staging)
        replace_folder(folder, staging)
        return _read(folder)
    if found is not None and epoch > uploaded:
        storage.upload_checkpoint(found, epoch)
    return epoch, history, state
