import json
import math
import os
import subprocess
import sys

import pytest
from benchmark_scripts import load
from mlflow.tracking import MlflowClient
from processes import ROOT

from rlft.configs import D3POConfig, DDPOConfig, DRaFTConfig

comparison = load("comparison")  # benchmarks/science/comparison.py, beside the script that runs the grid
DRAFT_LR = comparison.DRAFT_LR
FULL = comparison.FULL
METHODS = comparison.METHODS
QUICK = comparison.QUICK
TASKS = comparison.TASKS
Budget = comparison.Budget
Point = comparison.Point
Summary = comparison.Summary
curve = comparison.curve
mean_se = comparison.mean_se
method_config = comparison.method_config
summarise = comparison.summarise
target_gain = comparison.target_gain
task_table = comparison.task_table
time_to_reach = comparison.time_to_reach
verdicts = comparison.verdicts


@pytest.mark.parametrize("budget", [FULL, QUICK])
def test_every_method_of_every_task_samples_the_budget_on_one_sampler_and_evaluation_set(budget):
    for reward, methods in TASKS.values():
        configs = [method_config(m, reward, budget, seed=1) for m in methods]
        assert {c.images_per_epoch for c in configs} == {budget.images_per_epoch}
        assert {(c.num_steps, c.eta, c.eval_images, c.epochs, c.seed) for c in configs} == {
            (budget.num_steps, budget.eta, budget.eval_images, budget.epochs, 1)
        }
    colour = {m: method_config(m, "color-alignment-soft", FULL, 0) for m in METHODS}
    assert isinstance(colour["D3PO"], D3POConfig) and colour["D3PO"].pairs_per_epoch == 8
    assert isinstance(colour["DDPO"], DDPOConfig) and colour["DDPO"].prompts_per_epoch == 8
    assert isinstance(colour["ReFL"], DRaFTConfig) and colour["ReFL"].variant == "refl"
    assert colour["full DRaFT"].steps_with_grad == 10 and colour["DRaFT-1"].steps_with_grad == 1
    assert colour["D3PO"].lr == D3POConfig().lr  # each method keeps its job's defaults but DRaFT's lr
    assert {colour[m].lr for m in METHODS if isinstance(colour[m], DRaFTConfig)} == {DRAFT_LR}


def test_a_budget_no_method_can_sample_exactly_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"images_per_epoch=20 is not allowed: a multiple of 4 and 8"):
        method_config("DRaFT-1", "brightness", Budget(images_per_epoch=20), 0)
    with pytest.raises(ValueError, match="method 'PPO' is not one of D3PO, DDPO"):
        method_config("PPO", "brightness", FULL, 0)


def test_a_curve_starts_at_the_base_model_and_adds_one_point_per_epoch():
    history = [
        {"eval_reward_base_mean": 0.5, "eval_gain_mean": 0.1, "epoch_time_s": 2.0},
        {"eval_reward_base_mean": 0.5, "eval_gain_mean": 0.3, "epoch_time_s": 3.0},
    ]
    assert curve(history, 32) == [Point(0, 0.0, 0.5, 0.0), Point(32, 2.0, 0.6, 0.1), Point(64, 5.0, 0.8, 0.3)]


def test_mean_and_standard_error_over_seeds_by_hand():
    mean, se = mean_se([1.0, 2.0, 6.0])  # mean 3, sample variance (4 + 1 + 9) / 2 = 7
    assert mean == 3.0 and se == pytest.approx(math.sqrt(7 / 3))
    assert math.isnan(mean_se([4.0])[1])


def _summary(method, final_gains, path=(0.0, 0.5, 1.0)):
    """Seeds whose gain follows `path` scaled to each final gain, 10 images and 2 s per epoch."""
    curves = [[Point(10 * i, 2.0 * i, 1.0 + g * f, g * f) for i, f in enumerate(path)] for g in final_gains]
    return summarise(method, curves)


def test_summaries_reach_a_fraction_of_the_best_gain_at_the_first_evaluation_above_it():
    fast = _summary("fast", [0.4, 0.4], path=(0.0, 0.9, 1.0))
    slow = _summary("slow", [0.2, 0.2])
    assert fast.gain == (pytest.approx(0.4), 0.0) and fast.seeds == 2
    assert target_gain([fast, slow], 0.5) == pytest.approx(0.2)
    assert time_to_reach(fast, 0.2) == (10, 2.0)
    assert time_to_reach(slow, 0.2) == (20, 4.0)
    assert time_to_reach(slow, 0.3) is None
    assert target_gain([_summary("down", [-0.1, -0.2])], 0.5) is None
    table = task_table([slow, fast], 0.5)
    rows = table.splitlines()
    assert rows[2].startswith("| fast | +0.4000 +- 0.0000 (2) | +1.4000 +- 0.0000 | 10 | 2 | 4 |")
    assert rows[3].startswith("| slow | +0.2000 +- 0.0000 (2) |")


def test_verdicts_follow_two_standard_errors_and_say_none_for_one_seed():
    colour = {
        "D3PO": _summary("D3PO", [0.10, 0.12, 0.14]),
        "DDPO": _summary("DDPO", [0.01, 0.02, 0.03]),
        "DRaFT-1": _summary("DRaFT-1", [0.50, 0.52, 0.54]),
        "full DRaFT": _summary("full DRaFT", [0.60, 0.62, 0.64]),
        "DRaFT-LV": _summary("DRaFT-LV", [0.50, 0.52, 0.54], path=(0.0, 0.9, 1.0)),
    }
    rows = {
        claim.split(" (")[0]: verdict for claim, _, verdict in verdicts({"colour alignment": colour}, 0.5)
    }
    assert rows["D3PO from the reward's order trains about as well as DDPO on the reward"] == "reproduced"
    assert rows["DRaFT beats RL"] == "reproduced"
    # 0.52 vs 0.62, each SE 0.0115: 6 SE below full DRaFT
    assert rows["DRaFT-K with small K does at least as well as full backpropagation"] == "not reproduced"
    assert rows["DRaFT-LV is more sample-efficient than DRaFT-1"] == "reproduced"  # as high, reached sooner
    flat = {m: _summary(m, [-0.01, 0.0, 0.01]) for m in colour}
    assert {v for _, _, v in verdicts({"colour alignment": flat}, 0.5)} == {
        "inconclusive: neither rose nor fell beyond 2 SE"
    }
    # D3PO falling on colour (the grid of 1 December: -0.29, -0.08, -0.27) is reported as falling
    falling = colour | {
        "D3PO": _summary("D3PO", [-0.29, -0.08, -0.27]),
        "DDPO": _summary("DDPO", [-0.03, -0.02, 0.0]),
    }
    rows = {claim.split(" (")[0]: v for claim, _, v in verdicts({"colour alignment": falling}, 0.5)}
    claim = "D3PO from the reward's order trains about as well as DDPO on the reward"
    assert rows[claim] == "not reproduced: D3PO fell beyond 2 SE"
    one_seed = {
        m: Summary(m, 1, (0.1, float("nan")), (1.1, float("nan")), [0, 10], [0, 1], [], [0, 0.1])
        for m in colour
    }
    assert {v for _, _, v in verdicts({"colour alignment": one_seed}, 0.5)} == {"one seed: no verdict"}


@pytest.mark.slow
def test_the_quick_comparison_writes_its_report_a_curve_point_per_epoch_and_an_mlflow_run_per_cell(tmp_path):
    out = tmp_path / "docs"
    out.mkdir()
    (out / "results.md").write_text("an old report\n<!-- notes -->\nWhat we think differs: kept.\n")
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    command = [
        sys.executable,
        "benchmarks/science/compare.py",
        "--quick",
        "--workers",
        "2",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    report = (out / "results.md").read_text()
    assert "an old report" not in report and report.endswith("<!-- notes -->\nWhat we think differs: kept.\n")
    for task, (_, methods) in TASKS.items():
        assert f"### {task}" in report
        assert all(f"| {m} | " in report for m in methods)
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = json.loads((out / "results.json").read_text())["curves"]
    cells = [(t, m) for t, (_, methods) in TASKS.items() for m in methods]
    assert sorted((t, m) for t in curves for m in curves[t]) == sorted(cells)
    for task, method in cells:
        (points,) = curves[task][method]  # one seed
        assert [p["images"] for p in points] == [QUICK.images_per_epoch * e for e in range(QUICK.epochs + 1)]

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("rlft").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("rlft.kind") == "comparison"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted((r.data.tags["task"], r.data.tags["method"]) for r in children) == sorted(cells)
    for child in children:
        history = client.get_metric_history(child.info.run_id, "eval_gain_mean")
        assert [m.step for m in history] == list(range(QUICK.epochs))
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"results.md", "results.png"}
    assert parent.info.status == "FINISHED"

    # The report is rewritten from results.json alone, the same, with no run and no MLflow run.
    (out / "results.png").unlink()
    again = subprocess.run(
        [*command, "--report-only"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "results.md").read_text() == report and (out / "results.png").is_file()
    assert len(client.search_runs([client.get_experiment_by_name("rlft").experiment_id])) == len(runs)
