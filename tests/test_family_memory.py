"""benchmarks/family_memory.py on tiny-sd3, on CPU: both steps run rlft's learners, train the LoRA and are
measured; the full-size runs of the same script need a GPU (README, "Model families")."""

import importlib.util
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("family_memory", ROOT / "benchmarks" / "family_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_memory_benchmark_times_a_draft_and_a_d3po_step_that_train_the_lora(capsys):
    benchmark = _benchmark()
    args = benchmark.parse_args(
        ["--model", "tiny-sd3", "--device", "cpu", "--num-steps", "3", "--batch", "2"]
    )
    rows = benchmark.run(args)
    assert [row["step"] for row in rows] == ["DRaFT-K=1", "D3PO"]
    for row in rows:
        assert row["updated"] and math.isfinite(row["loss"])
        assert row["seconds"] > 0 and row["peak"] > 2**20
    printed = capsys.readouterr().out
    assert "tiny-sd3 | cpu float32 | 32 px, 3 steps" in printed and "gradient checkpointing on" in printed
    assert "| DRaFT-K=1 | 2 |" in printed and "| D3PO | 2 |" in printed
