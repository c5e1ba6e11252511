"""What the driver shows as a run goes: progress within an epoch, and the line each epoch ends with."""

import math
import re
import sys

import pytest

import rlft.progress
from rlft.algorithms.registry import ALGORITHMS
from rlft.configs import D3POConfig
from rlft.job import run_job
from rlft.loop import format_epoch
from rlft.progress import Progress, counted

SMALL_FLAGS = ["--eval-images", "4", "--pairs-per-epoch", "2", "--num-steps", "3", "--batch-size", "3"]


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines_over(seconds: int, every_s: float = 30.0) -> list[str]:
    """The lines of an epoch that samples 1 image a second for `seconds` seconds."""
    clock, lines = FakeClock(), []
    progress = Progress(lines.append, every_s=every_s, clock=clock)
    progress.begin("epoch 3")
    progress.expect("sampled", seconds)
    for _ in range(seconds):
        clock.now += 1
        progress.advance("sampled", 1)
    return lines


def test_an_epoch_shorter_than_the_interval_prints_nothing():
    assert _lines_over(15) == []
    assert _lines_over(29) == []


def test_a_long_epoch_prints_a_line_at_30_s_then_each_time_its_time_doubles():
    lines = _lines_over(600)  # 10 minutes: at 30, 60, 120, 240 and 480 s
    assert lines == [f"  epoch 3 | {t} s | sampled {t}/600 images" for t in (30, 60, 120, 240, 480)]
    assert len(_lines_over(3600)) == 7  # an hour: a handful, not 120


def test_a_line_names_every_phase_so_far_and_a_new_epoch_starts_afresh():
    clock, lines = FakeClock(), []
    progress = Progress(lines.append, every_s=30, clock=clock)
    progress.begin("epoch 0")
    progress.expect("sampled", 64)
    progress.advance("sampled", 64)
    progress.expect("trained", 1200)
    clock.now += 45
    progress.advance("trained", 300)
    assert lines == ["  epoch 0 | 45 s | sampled 64/64 images | trained 300/1200 items"]
    progress.begin("epoch 1")
    clock.now += 20
    progress.tick()  # 20 s into epoch 1: nothing yet, and nothing counted
    progress.expect("sampled", 64)
    clock.now += 10
    progress.tick()
    assert lines[1:] == ["  epoch 1 | 30 s | sampled 0/64 images"]


def test_a_bar_on_a_terminal_writes_no_log_lines(capsys):
    clock, lines = FakeClock(), []
    progress = Progress(lines.append, every_s=0, bar=True, clock=clock)
    progress.begin("epoch 2")
    progress.expect("sampled", 8)
    clock.now += 60
    progress.advance("sampled", 8)
    progress.close()
    assert lines == []
    assert "epoch 2: sampled" in capsys.readouterr().out


def test_counted_counts_a_batch_once_the_learner_asks_for_the_next():
    done = []
    batches = counted(iter([{"prompt": [0, 1, 2]}, {"prompt": [3]}]), done.append)
    first = next(batches)
    assert len(first["prompt"]) == 3 and done == []  # handed out, not yet trained
    next(batches)
    assert done == [3]
    assert list(batches) == [] and done == [3, 1]


def _job_lines(tmp_path, monkeypatch, capsys, name: str) -> list[str]:
    flags = ["--no-ray", "--no-track", "--epochs", "1", "--threads", "1", *SMALL_FLAGS]
    flags += ["--runs-dir", str(tmp_path), "--run-name", name]
    monkeypatch.setattr(sys, "argv", ["d3po.py", *flags])
    run_job(D3POConfig, "d3po", "")
    return capsys.readouterr().out.splitlines()


def test_a_no_ray_run_in_a_log_prints_one_line_per_epoch_and_no_progress(tmp_path, monkeypatch, capsys):
    lines = _job_lines(tmp_path, monkeypatch, capsys, "quiet")
    starts = [
        "D3PO | model tiny",
        "evaluation set: 4 images",
        "epoch   0 |",
        "before/after grid",
        "eval reward: base",
    ]
    assert len(lines) == len(starts), lines
    assert all(line.startswith(start) for line, start in zip(lines, starts, strict=True)), lines


def test_with_a_short_interval_a_run_prints_the_images_sampled_and_items_trained(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(rlft.progress, "EVERY_S", 0.0)  # a line at every count
    lines = _job_lines(tmp_path, monkeypatch, capsys, "chatty")
    progress = [line for line in lines if line.startswith("  ")]
    assert any(
        re.fullmatch(r"  evaluating the base model \| \d+ s \| evaluated \d/4 images", p) for p in progress
    )
    sampled = [p for p in progress if re.fullmatch(r"  epoch 0 \| \d+ s \| sampled \d+/\d+ images", p)]
    assert sampled and sampled[-1].endswith("sampled 8/8 images")  # 2 prompts x groups of 4
    trained = [p for p in progress if p.startswith("  epoch 0 |") and " | trained " in p]
    assert re.search(r"trained 3/6 items$", trained[0])  # 2 pairs x 3 steps, in batches of 3
    assert re.search(r"trained 6/6 items \| evaluated 4/4 images$", trained[-1])  # the epoch's evaluation
    epoch_line = next(i for i, line in enumerate(lines) if line.startswith("epoch   0"))
    assert lines.index(trained[-1]) < epoch_line


# The epoch line: numbers a user reads, at the digits where they move.

D3PO_PARTS = ALGORITHMS["d3po"].epoch_parts
D3PO_EPOCH = {
    "eval_reward_mean": 0.4123,
    "eval_reward_se": 0.0101,
    "eval_gain_mean": 0.0342,
    "eval_gain_se": 0.0031,
    "reward_mean": -1.2345,
    "reward_std": 0.1234,
    "loss": math.log(2) - 3.1e-5,  # what D3PO's loss looks like while it learns: log 2 to 4 decimals
    "reward_margin": 6.2e-5,
    "log_ratio_w": 1.2e-4,
    "log_ratio_l": 5.8e-5,
    "log_ratio_abs": 8.9e-5,
    "preference_accuracy": 0.53125,
    "clamped_fraction": 0.0,
    "pairs": 30.0,
    "ties": 2.0,
    "grad_norm": 0.0321,
    "samples_per_s": 12.34,
    "epoch_time_s": 15.2,
    "nan_rewards": 0.0,
}


def test_d3po_shows_the_loss_as_its_distance_from_log_2_and_the_log_ratios():
    assert format_epoch(3, D3PO_EPOCH, D3PO_PARTS) == (
        "epoch   3 | eval 0.4123 +- 0.0101 (gain +0.0342 +- 0.0031) | train reward -1.2345 +- 0.1234 | "
        "loss log2-3.1e-05 | margin +6.2e-05 | acc 0.531 | log-ratio w +1.2e-04 l +5.8e-05 | "
        "pairs 30 (94% of compared) | grad 3.2e-02 | 12.3 img/s | 15.2 s"
    )
    clamped = format_epoch(3, D3PO_EPOCH | {"clamped_fraction": 0.125, "nan_rewards": 2.0}, D3PO_PARTS)
    assert "| log-ratio w +1.2e-04 l +5.8e-05 | clamped 12.5% | pairs 30" in clamped
    assert clamped.endswith("| 15.2 s | 2 NaN rewards dropped")


def test_d3po_on_labels_and_an_epoch_where_every_pair_tied():
    labels = {k: D3PO_EPOCH[k] for k in ("loss", "reward_margin", "log_ratio_w", "log_ratio_l", "grad_norm")}
    labels |= {
        "preference_accuracy": 0.6,
        "pairs": 10.0,
        "ties": 2.0,
        "items_per_s": 40.0,
        "epoch_time_s": 2.0,
    }
    assert format_epoch(0, labels, D3PO_PARTS) == (
        "epoch   0 | loss log2-3.1e-05 | margin +6.2e-05 | acc 0.600 | log-ratio w +1.2e-04 l +5.8e-05 | "
        "pairs 10 (83% of compared) | grad 3.2e-02 | 40.0 items/s | 2.0 s"
    )
    tied = {"loss": float("nan"), "preference_accuracy": float("nan"), "grad_norm": 0.0, "pairs": 0.0}
    tied |= {"ties": 8.0, "reward_mean": 0.5, "reward_std": 0.0, "samples_per_s": 8.0, "epoch_time_s": 1.0}
    assert format_epoch(1, tied, D3PO_PARTS) == (
        "epoch   1 | train reward 0.5000 +- 0.0000 | nothing trained | pairs 0 (0% of compared) | "
        "grad 0.0e+00 | 8.0 img/s | 1.0 s"
    )


def test_ddpo_shows_its_loss_kl_and_clipped_share_in_the_digits_that_move():
    m = {
        "reward_mean": 0.25,
        "reward_std": 0.05,
        "loss": -1.23e-3,
        "approx_kl": 3.4e-6,
        "clip_fraction": 0.003,
    }
    m |= {"advantage_abs": 0.8, "items": 96.0, "grad_norm": 0.5, "samples_per_s": 3.0, "epoch_time_s": 40.0}
    assert format_epoch(7, m, ALGORITHMS["ddpo"].epoch_parts) == (
        "epoch   7 | train reward 0.2500 +- 0.0500 | loss -1.23e-03 | kl 3.4e-06 | clipped 0.3% | "
        "grad 5.0e-01 | 3.0 img/s | 40.0 s"
    )


@pytest.mark.parametrize("loss, shown", [(-1.2345, "loss -1.2345"), (1.2e-4, "loss 1.20e-04")])
def test_draft_shows_its_loss_at_the_rewards_scale(loss, shown):
    m = {"reward_mean": 1.2345, "reward_std": 0.1, "loss": loss, "train_reward": 1.2345, "grad_norm": 2.0}
    m |= {"samples_per_s": 5.0, "epoch_time_s": 3.0}
    assert (
        format_epoch(0, m, ALGORITHMS["draft"].epoch_parts)
        == f"epoch   0 | train reward 1.2345 +- 0.1000 | {shown} | grad 2.0e+00 | 5.0 img/s | 3.0 s"
    )


def test_the_loop_names_no_algorithms_metrics():
    """Each algorithm formats its own numbers (its Algorithm's epoch_parts): the loop's line holds only what
    every run shares, so a new algorithm adds nothing there."""
    import inspect

    import rlft.loop

    source = inspect.getsource(rlft.loop)
    own = ("reward_margin", "preference_accuracy", "approx_kl", "clip_fraction", "pairs", "log_ratio")
    assert [name for name in own if name in source] == []
    assert {"d3po", "ddpo", "draft"} <= set(ALGORITHMS)
    assert all(callable(algorithm.epoch_parts) for algorithm in ALGORITHMS.values())
