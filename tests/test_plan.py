"""`--dry-run`: the plan it prints (processes, parameters counted on the meta device, memory, data,
checkpoint) and that it starts nothing."""

from pathlib import Path

import pytest
import ray

from rlft import cli


def dry_run(args: list[str], tmp_path: Path, monkeypatch, capsys) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cli.main(["d3po", "--dry-run", *args, "--runs-dir", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    assert not ray.is_initialized()
    return capsys.readouterr().out


def test_the_dry_run_prints_the_default_plan_and_starts_nothing(tmp_path, monkeypatch, capsys):
    plan = dry_run([], tmp_path, monkeypatch, capsys)
    assert "1 x sampler: 1 CPU, 0 GPU" in plan and "1 x train worker: 1 CPU, 0 GPU" in plan
    assert "trained: 0.02 M (LoRA rank 4)" in plan
    assert (
        "data per epoch through Ray Data" in plan and "160 (pair, step) items" in plan
    )  # 16 pairs x 10 steps
    plan = dry_run(["--skip-final-steps", "2"], tmp_path, monkeypatch, capsys)
    assert "128 (pair, step) items" in plan  # 16 pairs x 8 steps
    plan = dry_run(["--objective", "noised", "--noised-draws", "3"], tmp_path, monkeypatch, capsys)
    assert "48 (pair, draw) items of 3 latents" in plan  # 16 pairs x 3 draws


@pytest.mark.parametrize("model", ["sd35-random", "flux-random"])
def test_the_dry_run_counts_the_full_size_models_parameters(model, tmp_path, monkeypatch, capsys):
    import torch

    from rlft.zoo.full_size import FULL_SIZE

    parts = FULL_SIZE[model](0, device="meta", dtype=torch.bfloat16).components.values()
    counted = sum(p.numel() for m in parts if isinstance(m, torch.nn.Module) for p in m.parameters())
    args = ["--model", model, "--dtype", "bfloat16", "--micro-batch", "1", "--gradient-checkpointing"]
    plan = dry_run(args, tmp_path, monkeypatch, capsys)
    assert f"frozen pipeline {counted * 2 / 1024**3:.2f} GB" in plan, plan  # bfloat16: 2 bytes each
    assert "1 items x 2 (pair)" in plan and "gradient checkpointing on" in plan


def test_the_dry_run_counts_a_local_reward_models_memory(tmp_path, monkeypatch, capsys):
    from rlft.rewards import pickscore

    scorer = pickscore.random_scorer(small=True)
    pickscore.save_folder(tmp_path / "ps", scorer)
    size = sum(p.numel() for p in scorer.clip.parameters()) * 4 / 1024**2
    monkeypatch.chdir(tmp_path)
    cli.main(["draft", "--dry-run", "--reward", f"pickscore:{tmp_path / 'ps'}", "--variant", "draft-lv"])
    plan = capsys.readouterr().out
    assert f"memory, scorer: reward model {size:.1f} MB" in plan
    assert f"reward model {size:.1f} MB (DRaFT differentiates it here)" in plan
    assert "8 samples x 2 (copies)" in plan
