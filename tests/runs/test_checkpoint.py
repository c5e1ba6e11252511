"""A run folder holds one run: its defining settings are recorded, and one job at a time trains it."""

import os
import shutil
from pathlib import Path

import pytest

from rlft.configs import D3POConfig, DRaFTConfig
from rlft.runs import checkpoint
from rlft.runs.checkpoint import (
    OtherRun,
    UnreadableCheckpoint,
    check_same_run,
    check_writable,
    load_checkpoint,
    run_lock,
    save_checkpoint,
)
from rlft.runs.storage import RunStorage

SAVED = dict(epoch=0, history=[{"loss": 0.5}], state={"weights": {}, "optimizer": {}}, adapter={})


def test_the_defining_settings_leave_out_where_and_how_fast_a_run_goes():
    settings = D3POConfig().defining_settings()
    assert settings["job"] == "D3POConfig" and settings["algorithm"] == "d3po"
    assert settings["lr"] == 6e-3 and settings["lora_targets"] == ["to_q", "to_k", "to_v", "to_out.0"]
    for field in ("epochs", "threads", "train_workers", "storage", "ray", "samplers", "run_name"):
        assert field not in settings
    assert D3POConfig(epochs=30, threads=1, ray=False).defining_settings() == settings


def test_a_bfloat16_run_is_another_run_and_a_compiled_one_the_same(tmp_path):
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, **SAVED, settings=D3POConfig().defining_settings())
    assert "dtype" not in D3POConfig().defining_settings()  # as checkpoints from before the field
    check_same_run(folder, D3POConfig(compile=True).defining_settings(), "r")  # how fast, not what
    with pytest.raises(OtherRun, match=r"dtype was None, now 'bfloat16'"):
        check_same_run(folder, D3POConfig(dtype="bfloat16").defining_settings(), "r")


def test_a_changed_setting_is_named_with_both_values(tmp_path):
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, **SAVED, settings=D3POConfig().defining_settings())
    check_same_run(folder, D3POConfig(epochs=20).defining_settings(), "r")  # more epochs: the same run
    with pytest.raises(
        OtherRun, match=r"run_name='r' holds a run with other settings \(lr was 0.006, now 0.5\)"
    ):
        check_same_run(folder, D3POConfig(lr=0.5).defining_settings(), "r")
    with pytest.raises(OtherRun, match=r"algorithm was 'd3po', now 'draft'.*another --run-name"):
        check_same_run(folder, DRaFTConfig().defining_settings(), "r")
    check_same_run(tmp_path / "none", D3POConfig(lr=0.5).defining_settings(), "r")  # nothing to resume


def test_a_checkpoint_from_before_settings_were_recorded_still_resumes(tmp_path):
    save_checkpoint(tmp_path, **SAVED)  # no settings
    check_same_run(tmp_path, D3POConfig(lr=0.5).defining_settings(), "r")


def test_a_second_job_on_a_run_in_use_is_refused_and_the_lock_goes_with_the_first(tmp_path):
    with run_lock(tmp_path / "r"):
        with pytest.raises(ValueError, match=r"run_name='r' is in use: another job is training"):
            with run_lock(tmp_path / "r"):
                pass
    with run_lock(tmp_path / "r"):  # free again
        pass


def saved_epochs(folder, epochs=2) -> None:
    for epoch in range(epochs):
        save_checkpoint(folder, **SAVED | {"epoch": epoch, "history": [{"loss": 0.5}] * (epoch + 1)})


@pytest.mark.parametrize("damage", ["empty", "truncated", "random"])
def test_an_unreadable_checkpoint_is_named_and_the_epoch_before_it_resumes(tmp_path, damage):
    folder = tmp_path / "checkpoint"
    saved_epochs(folder)
    state = folder / "state.pt"
    data = state.read_bytes()
    state.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "random": os.urandom(4096)}[damage])
    lines = []
    epoch, history, _ = load_checkpoint(folder, log=lines.append)
    assert (epoch, len(history)) == (0, 1)  # the epoch before, kept beside it
    assert lines[0].startswith(f"warning: {state} is not a readable checkpoint")
    shutil.rmtree(tmp_path / "checkpoint.old")
    with pytest.raises(
        UnreadableCheckpoint, match=rf"{state} is not a readable checkpoint .* move {folder} away"
    ):
        load_checkpoint(folder)


def test_the_epoch_resumed_after_a_damaged_checkpoint_is_the_one_uploaded(tmp_path):
    folder = tmp_path / "checkpoint"
    saved_epochs(folder)  # epochs 0 and 1, no storage yet: both newer than anything uploaded
    (folder / "state.pt").write_bytes(b"")
    storage = RunStorage(str(tmp_path / "shared"), "run")
    assert load_checkpoint(folder, storage, log=lambda line: None)[0] == 0
    uploaded = tmp_path / "shared" / "run" / "checkpoint" / "epoch_0000" / "state.pt"
    assert (
        uploaded.read_bytes() == (tmp_path / "checkpoint.old" / "state.pt").read_bytes()
    )  # not the empty one


def test_a_full_disk_is_named_and_the_previous_checkpoint_is_left_whole(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint"
    saved_epochs(folder, 1)

    def disk_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 94272 vs 94164")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match=r"writing the checkpoint of epoch 1 .* failed .*MiB free on that disk"):
        save_checkpoint(folder, **SAVED | {"epoch": 1})
    monkeypatch.undo()
    assert load_checkpoint(folder)[0] == 0 and not (tmp_path / "checkpoint.tmp").exists()


def test_every_file_and_folder_is_flushed_before_the_rename_publishes_it(tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(checkpoint, "fsync", lambda path: flushed.append((path, Path(path).exists())))
    save_checkpoint(tmp_path / "checkpoint", **SAVED)
    staging = tmp_path / "checkpoint.tmp"
    assert (staging / "state.pt", True) in flushed and (staging, True) in flushed  # before the rename
    assert flushed[-1] == (tmp_path, True)  # then the folder holding the rename


def test_a_runs_folder_that_cannot_be_written_is_refused_naming_the_field(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(
        ValueError, match=r"runs_dir='.*a-file/runs' is not allowed: .* not a folder this job"
    ):
        check_writable(tmp_path / "a-file" / "runs")
    check_writable(tmp_path / "new" / "runs")  # made when the first checkpoint is saved
