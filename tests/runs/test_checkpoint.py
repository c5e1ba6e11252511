"""A run folder holds one run: its defining settings are recorded, and one job at a time trains it."""

import pytest

from rlft.configs import D3POConfig, DRaFTConfig
from rlft.runs.checkpoint import OtherRun, check_same_run, run_lock, save_checkpoint

SAVED = dict(epoch=0, history=[{"loss": 0.5}], state={"weights": {}, "optimizer": {}}, adapter={})


def test_the_defining_settings_leave_out_where_and_how_fast_a_run_goes():
    settings = D3POConfig().defining_settings()
    assert settings["job"] == "D3POConfig" and settings["algorithm"] == "d3po"
    assert settings["lr"] == 6e-3 and settings["lora_targets"] == ["to_q", "to_k", "to_v", "to_out.0"]
    for field in ("epochs", "threads", "train_workers", "storage", "ray", "samplers", "run_name"):
        assert field not in settings
    assert D3POConfig(epochs=30, threads=1, ray=False).defining_settings() == settings


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
