"""benchmarks/speed/family_memory.py on tiny-sd3, on CPU: both steps run rlft's learners, train the LoRA and
are measured; the full-size runs of the same script need a GPU (docs/models.md)."""

import math

import pytest
from benchmark_scripts import load


def test_the_memory_benchmark_times_draft_steps_for_each_k_and_a_d3po_step_that_train_the_lora(capsys):
    benchmark = load("family_memory")
    args = benchmark.parse_args(
        ["--model", "tiny-sd3", "--device", "cpu", "--num-steps", "3", "--batch", "2", "--k", "1,3"]
    )
    rows = benchmark.run(args)
    assert [row["step"] for row in rows] == ["DRaFT-K=1", "DRaFT-K=3", "D3PO"]
    assert rows[1]["seconds"] > rows[0]["seconds"]  # through three steps of the model instead of one
    for row in rows:
        assert row["updated"] and math.isfinite(row["loss"])
        assert row["seconds"] > 0 and row["peak"] > 2**20
    printed = capsys.readouterr().out
    assert "tiny-sd3 | cpu float32 | 32 px, 3 steps" in printed and "gradient checkpointing on" in printed
    assert "| DRaFT-K=1 | 2 |" in printed and "| D3PO | 2 |" in printed


def test_a_k_beyond_the_steps_is_refused_naming_the_flag(capsys):
    benchmark = load("family_memory")
    for flags, message in (
        (["--k", "1,50"], "each K from 1 to --num-steps (28)"),
        (["--k", "a"], "whole numbers"),
    ):
        with pytest.raises(SystemExit):
            benchmark.parse_args(flags)
        assert message in capsys.readouterr().err


def test_the_memory_benchmark_runs_the_sd15_family_too():
    benchmark = load("family_memory")  # the tiny model is SD 1.x's, whose encode_prompt takes a list
    rows = benchmark.run(benchmark.parse_args(["--model", "tiny", "--device", "cpu", "--num-steps", "2"]))
    assert [row["step"] for row in rows] == ["DRaFT-K=1", "D3PO"] and all(row["updated"] for row in rows)
