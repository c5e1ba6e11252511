"""Checkpoints on storage every node shares (S3, GCS, a mounted folder), so losing the driver's disk loses
no finished epoch.

Layout under `<storage>/<run-name>/`:
    checkpoint/epoch_0003/state.pt, adapter/..., COMPLETE    one folder per uploaded epoch
    adapter/...                                              the final adapter
The marker `COMPLETE` is written last, so a folder a crash left half-uploaded has none and is ignored. After
an upload the older epochs are deleted, keeping the newest KEEP. Reads and writes go through `pyarrow.fs`
(it retries S3 requests itself: 3 attempts); a failure that survives its retries raises OSError naming the
storage and stops the run (the local checkpoint is already written; the same command again uploads it).
"""

from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from rlft.runs.secrets import redact

MARKER = "COMPLETE"
KEEP = 2
# Schemes pyarrow opens; the bucket (or host) after them must not be empty.
SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs")
ALLOWED = "s3://bucket/prefix, gs://bucket/prefix, abfs://, hdfs://, file:///folder or a folder path"
PLACEHOLDER = "YOUR-BUCKET"  # cluster.yaml's, until people put their own bucket there


def storage_problem(uri: str) -> str | None:
    """What is wrong with a storage URI (read without touching the network), or None."""
    if not uri:
        return "empty"
    if uri.strip() != uri:
        return "padded with spaces"
    if "://" not in uri:
        return None  # a folder (a mounted shared disk)
    parsed = urlparse(uri)
    if parsed.hostname == PLACEHOLDER.lower():
        return f"{PLACEHOLDER} is cluster.yaml's placeholder: put your bucket's name there"
    if parsed.scheme == "file":
        return None if parsed.path.startswith("/") else "file:// needs an absolute path"
    if parsed.scheme not in SCHEMES:
        return f"unknown scheme {parsed.scheme!r}"
    return None if parsed.hostname else f"{parsed.scheme}:// needs a bucket (or host)"


def check_reachable(uri: str) -> None:
    """A ValueError naming `storage` when its bucket does not exist or cannot be read (credentials,
    network): asked before a run starts, not after its first epoch. Folders are made when first written."""
    scheme = urlparse(uri).scheme if "://" in uri else ""
    if scheme not in SCHEMES or scheme == "hdfs":
        return
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        bucket = root.split("/")[0]
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(redact(f"storage={uri!r} cannot be reached: {error}")) from None
    if not found:
        raise ValueError(
            redact(f"storage={uri!r}: the bucket {bucket!r} does not exist; create it or name another")
        )


def _epoch_folder(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


class RunStorage:
    """One run's folder on shared storage: `<uri>/<run_name>` (the run folder's own name)."""

    def __init__(self, uri: str, run_name: str):
        self.uri = uri
        absolute = uri if "://" in uri else str(Path(uri).resolve())
        try:
            self.fs, root = pafs.FileSystem.from_uri(absolute)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(redact(f"storage={uri!r} cannot be opened: {error}")) from None
        self.root = f"{root.rstrip('/')}/{run_name}"
        self.checkpoints = f"{self.root}/checkpoint"

    def _failed(self, what: str, error: OSError) -> OSError:
        return OSError(redact(f"storage={self.uri!r}: {what} failed: {error}"))

    def epoch_folders(self) -> dict[int, bool]:
        """{epoch: whether its upload completed} for every epoch folder under checkpoint/."""
        try:
            selector = pafs.FileSelector(self.checkpoints, allow_not_found=True)
            names = [info.base_name for info in self.fs.get_file_info(selector)]
            epochs = sorted(int(n.removeprefix("epoch_")) for n in names if n.startswith("epoch_"))
            markers = [f"{self.checkpoints}/{_epoch_folder(e)}/{MARKER}" for e in epochs]
            found = self.fs.get_file_info(markers)
        except OSError as error:
            raise self._failed("listing checkpoints", error) from error
        return {e: info.type == pafs.FileType.File for e, info in zip(epochs, found, strict=True)}

    def newest_epoch(self) -> int:
        """The newest epoch whose upload completed, or -1."""
        return max((e for e, done in self.epoch_folders().items() if done), default=-1)

    def upload_checkpoint(self, folder: Path, epoch: int) -> None:
        """Copy a local checkpoint folder as epoch `epoch`, mark it complete, then drop older epochs."""
        target = f"{self.checkpoints}/{_epoch_folder(epoch)}"
        self._copy_up(folder, target, f"uploading epoch {epoch}")  # replaces a half-upload of a previous try
        try:
            with self.fs.open_output_stream(f"{target}/{MARKER}") as marker:
                marker.write(b"")
        except OSError as error:
            raise self._failed(f"uploading epoch {epoch}", error) from error
        folders = self.epoch_folders()
        kept = sorted(e for e, done in folders.items() if done)[-KEEP:]
        for old in (e for e in folders if e < kept[0]):
            try:
                self.fs.delete_dir(f"{self.checkpoints}/{_epoch_folder(old)}")
            except OSError as error:
                raise self._failed(f"deleting epoch {old}", error) from error

    def download_checkpoint(self, epoch: int, folder: Path) -> None:
        """Copy epoch `epoch`'s uploaded checkpoint into a new local folder."""
        source = f"{self.checkpoints}/{_epoch_folder(epoch)}"
        Path(folder).mkdir(parents=True)
        try:
            pafs.copy_files(source, str(Path(folder).resolve()), self.fs, pafs.LocalFileSystem())
        except OSError as error:
            raise self._failed(f"downloading epoch {epoch}", error) from error
        (Path(folder) / MARKER).unlink(missing_ok=True)

    def upload_folder(self, folder: Path, name: str) -> None:
        """Copy a local folder to `<run>/<name>`, replacing what was there (the final adapter)."""
        self._copy_up(folder, f"{self.root}/{name}", f"uploading {name}")

    def _copy_up(self, folder: Path, target: str, what: str) -> None:
        """Make `target` a copy of the local `folder`, whatever it held before."""
        try:
            self.fs.delete_dir_contents(target, missing_dir_ok=True)
            self.fs.create_dir(target)  # copy_files makes only subfolders (a folder storage needs it)
            pafs.copy_files(str(Path(folder).resolve()), target, pafs.LocalFileSystem(), self.fs)
        except OSError as error:
            raise self._failed(what, error) from error
