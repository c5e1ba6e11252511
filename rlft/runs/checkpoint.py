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
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from rlft.runs.storage import RunStorage

STATE_FILE = "state.pt"
SETTINGS_FILE = "settings.json"  # the settings that define the run (RunConfig.defining_settings)
LOCK_FILE = ".lock"


class OtherRun(ValueError):
    """The run folder holds another run: its checkpoint was written with other defining settings."""


class UnreadableCheckpoint(ValueError):
    """A checkpoint's state file is empty, truncated or not a checkpoint, and no earlier one is readable."""


def check_writable(folder: str | Path, field: str = "runs_dir") -> None:
    """A ValueError naming `field` when `folder` cannot be made and written (checked before a run starts, not
    when its first checkpoint is saved)."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{field}={str(folder)!r} is not allowed: {existing} is not a folder this job can write"
        )


def fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries (the renames in it), to the disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder`, and `folder`, before a rename publishes it."""
    for path in [*sorted(folder.rglob("*"), reverse=True), folder]:
        fsync(path)


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


def replace_folder(folder: Path, staging: Path, keep_previous: bool = False) -> None:
    """Put `staging` in the place of `folder`; at every moment one of the two names holds a whole one. With
    keep_previous, the folder it replaces stays as `<folder>.old` (a checkpoint's previous epoch)."""
    previous = folder.with_name(folder.name + ".old")
    shutil.rmtree(previous, ignore_errors=True)
    if folder.exists():
        folder.rename(previous)
    staging.rename(folder)
    if not keep_previous:
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
    try:
        staging.mkdir(parents=True)
        write_files(staging / "adapter", adapter)
        if settings is not None:
            (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=1, sort_keys=True))
        torch.save({"epoch": epoch, "history": history, **state}, staging / STATE_FILE)
        fsync_tree(staging)  # on the disk before the rename makes it the checkpoint
    except (OSError, RuntimeError) as error:  # torch's zip writer reports a full disk as a RuntimeError
        shutil.rmtree(staging, ignore_errors=True)
        free = shutil.disk_usage(folder.parent).free
        raise OSError(
            f"writing the checkpoint of epoch {epoch} to {staging} failed ({error}); "
            f"{free / 2**20:.0f} MiB free on that disk. The epoch before's checkpoint is still {folder}"
        ) from error
    replace_folder(folder, staging, keep_previous=True)  # <folder>.old: the epoch before, a fallback
    fsync(folder.parent)  # the renames
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


def _read_state(path: Path) -> tuple[int, list[dict[str, float]], dict]:
    """(epoch, history, state) of a state file, or UnreadableCheckpoint naming it."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        epoch, history = state.pop("epoch"), state.pop("history")
    except Exception as error:  # empty, truncated or foreign files fail in many ways (EOF, zip, unpickling)
        first = (str(error).strip().splitlines() or [""])[0][:160]  # torch's hints would mislead here
        raise UnreadableCheckpoint(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {first})"
        ) from None
    return epoch, history, state


def _read(
    folder: Path | None, log: Callable[[str], None] = print
) -> tuple[Path | None, int, list, dict | None]:
    """(the folder read, epoch, history, state): the checkpoint in `folder`, or, when its state file is
    unreadable, the epoch before (`<folder>.old`)."""
    if folder is None:
        return None, -1, [], None
    try:
        return folder, *_read_state(folder / STATE_FILE)
    except UnreadableCheckpoint as error:
        previous = folder.with_name(folder.name + ".old")
        if folder.name.endswith(".old") or not (previous / STATE_FILE).is_file():
            raise UnreadableCheckpoint(
                f"{error}, and no earlier checkpoint is beside it: move {folder} away to start this run "
                "afresh, or give another --run-name"
            ) from None
        epoch, history, state = _read_state(previous / STATE_FILE)
        log(f"warning: {error}; resuming from the epoch before it ({previous}, epoch {epoch})")
        return previous, epoch, history, state


def load_checkpoint(
    folder: Path, storage: RunStorage | None = None, log: Callable[[str], None] = print
) -> tuple[int, list[dict[str, float]], dict | None]:
    """(last finished epoch, history, {"weights", "optimizer"}), or (-1, [], None) if there is none.

    With `storage`, the newer of the local and the uploaded checkpoint: an uploaded one that is newer (a new
    head node, a lost disk) is downloaded into `folder` first; a local one that is newer (its upload failed)
    is uploaded now.
    """
    folder = Path(folder)
    found, epoch, history, state = _read(_local(folder), log)  # found: the folder read (maybe the .old one)
    if storage is None:
        return epoch, history, state
    uploaded = storage.newest_epoch()
    if uploaded > epoch:
        staging = staging_folder(folder)
        storage.download_checkpoint(uploaded, staging)
        replace_folder(folder, staging)
        return _read(folder, log)[1:]
    if found is not None and epoch > uploaded:
        storage.upload_checkpoint(found, epoch)  # never a damaged folder: `found` is the one read
    return epoch, history, state
