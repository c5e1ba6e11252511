import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlft.configs import D3POConfig, DDPOConfig, DRaFTConfig
from rlft.job import run_job, run_labels_job

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"d3po.py": D3POConfig, "draft.py": DRaFTConfig, "ddpo.py": DDPOConfig}  # the sampling jobs
JOBS = {  # what each job file runs
    "d3po.py": lambda: run_job(D3POConfig, "d3po", ""),
    "draft.py": lambda: run_job(DRaFTConfig, "draft", ""),
    "ddpo.py": lambda: run_job(DDPOConfig, "ddpo", ""),
    "d3po_labels.py": lambda: run_labels_job(""),
}


@pytest.mark.parametrize(
    "config, kwargs, message",
    [
        (D3POConfig, {"eta": 0.0}, "eta=0.0 is not allowed: > 0"),
        (D3POConfig, {"group_size": 1}, "group_size=1 is not allowed: at least 2"),
        (D3POConfig, {"reward": "aesthetics"}, "reward 'aesthetics' is unknown"),
        (D3POConfig, {"model": "./nowhere"}, "model folder './nowhere' does not exist"),
        (D3POConfig, {"clip": 1.5}, "clip=1.5 is not allowed: in \\(0, 1\\)"),
        (D3POConfig, {"objective": "latents"}, "objective='latents' is not allowed: steps or noised"),
        (
            D3POConfig,
            {"skip_final_steps": 10},
            "skip_final_steps=10 is not allowed: 0 to num_steps - 1 \\(9\\)",
        ),
        (D3POConfig, {"kl_coef": -0.5}, "kl_coef=-0.5 is not allowed: 0 or more"),
        (DRaFTConfig, {"k": 0}, "k=0 is not allowed: in 1..20"),
        (DRaFTConfig, {"k": 21}, "k=21 is not allowed: in 1..20"),
        (DRaFTConfig, {"reward": "jpeg-compressibility"}, "not differentiable"),
        (DRaFTConfig, {"resolution": 20}, "resolution=20 is not allowed: a multiple of 8"),
        (D3POConfig, {"reward": "human:", "ray": False}, "reward='human:' is not allowed"),
        (DRaFTConfig, {"reward": "human:some/batch", "ray": False}, "reward='human:some/batch' is not"),
        (DDPOConfig, {"advantages": "group", "samples_per_prompt": 1}, "samples_per_prompt=1 is not allowed"),
        (
            DDPOConfig,
            {"reward": "brightness,smoothness"},
            "reward='brightness,smoothness' is not allowed: one",
        ),
        (DDPOConfig, {"clip_range": 1.0}, "clip_range=1.0 is not allowed: in \\(0, 1\\)"),
        (DDPOConfig, {"timestep_fraction": 1.5}, "timestep_fraction=1.5 is not allowed: in \\(0, 1\\]"),
        (DDPOConfig, {"inner_epochs": 0}, "inner_epochs=0 is not allowed: at least 1"),
        (DDPOConfig, {"skip_final_steps": -1}, "skip_final_steps=-1 is not allowed: 0 to num_steps - 1"),
        (D3POConfig, {"samplers": 0}, "samplers=0 is not allowed: at least 1"),
        (DRaFTConfig, {"scorers": -1}, "scorers=-1 is not allowed: 0 \\(the samplers score\\) or more"),
        (D3POConfig, {"scorers": 0, "scorer_gpus": 0.5}, "scorer_gpus=0.5 is not allowed: 0 with scorers=0"),
        (D3POConfig, {"dtype": "float16"}, "dtype='float16' is not allowed: 'float32' or 'bfloat16'"),
        (
            DRaFTConfig,
            {"dtype": "bfloat16", "full_finetune": True},
            "dtype='bfloat16' is not allowed: 'float32' with full_finetune",
        ),
    ],
)
def test_bad_values_name_the_field(config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(**kwargs)


def float_fields(config_type) -> list[str]:
    """Every field a float may be given to, including the optional ones (lora_alpha)."""
    return [f.name for f in dataclasses.fields(config_type) if f.type in (float, float | None)]


@pytest.mark.parametrize(
    "job, field",
    [(job, f) for job, c in CONFIGS.items() for f in float_fields(c)],
)
def test_every_float_flag_of_every_sampling_job_is_refused_naming_the_field_unless_it_is_a_value_that_trains(
    job, field, tmp_path, monkeypatch
):
    """Each sampling job's every float flag, given nan, inf, -inf, 0 and -1 on its command line: refused in
    one line naming the field, before a run folder or an MLflow store exists, or accepted only as the flag's
    default (which the learning tests train), so nothing accepted here is untried. nan and inf would train
    NaN weights; out-of-range values would fail late."""
    default = getattr(CONFIGS[job](), field)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for text in ("nan", "inf", "-inf", "0", "-1"):
        value = float(text)
        if value == default:
            continue
        flag = "--" + field.replace("_", "-")
        monkeypatch.setattr(sys, "argv", [job, flag, text, "--runs-dir", str(tmp_path / "o")])
        with pytest.raises(SystemExit) as exited:
            JOBS[job]()
        assert str(exited.value.code).startswith(f"error: {field}={value!r} is not allowed"), exited.value
        assert not (tmp_path / "o").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "a\\b", "it's", ""])
def test_a_run_name_must_stay_one_folder_below_the_runs_folder(name):
    with pytest.raises(
        ValueError, match=r"run_name=.* is not allowed: a folder name one level below runs_dir"
    ):
        D3POConfig(run_name=name)
    with pytest.raises(ValueError, match=r"seed=-1 is not allowed: 0 or more"):
        D3POConfig(seed=-1)


def test_draft_variants_set_how_many_steps_carry_gradient():
    assert DRaFTConfig(k=3).steps_with_grad == 3
    assert DRaFTConfig(variant="draft-lv").steps_with_grad == 1
    assert DRaFTConfig(variant="full", num_steps=7).steps_with_grad == 7


@pytest.mark.parametrize(
    "job, flags, field",
    [
        ("d3po.py", ["--eta", "0"], "eta"),
        ("draft.py", ["--k", "50"], "k=50"),
        ("d3po.py", ["--model", "no/such/./folder/x"], "model"),
        ("d3po.py", ["--run-name", "a/b"], "run_name"),
        ("draft.py", ["--tracking-uri-is-not-a-flag"], "unknown flag --tracking-uri-is-not-a-flag"),
        ("d3po.py", ["--lr", "inf"], "lr=inf is not allowed: a finite number"),
        ("d3po.py", ["--lr", "abc"], "--lr: could not convert string to float"),
        ("draft.py", ["--sampler-gpus", "nan"], "sampler_gpus=nan is not allowed"),
        ("d3po.py", ["--run-name", ".."], "run_name='..' is not allowed"),
        ("d3po.py", ["--batch-size", "15", "--train-workers", "2"], "batch_size=15"),
        # Checked against the (local) Ray cluster once it is up, before any actor or MLflow run exists.
        ("d3po.py", ["--worker-gpus", "1"], "worker_gpus=1.0 is not allowed: no node"),
        ("draft.py", ["--samplers", "2", "--no-ray"], "ray=False is not allowed"),
        # A labelled batch folder is read and checked before Ray or MLflow starts.
        ("d3po_labels.py", ["--batch", "no/such/batch"], "batch='no/such/batch' is not allowed"),
        ("d3po_labels.py", [], "--batch"),  # required
        ("d3po_labels.py", ["--batch", "b", "--reward", "brightness"], "unknown flag --reward"),  # no reward
        # People's labels train with the labels job, named by the refusal.
        ("d3po.py", ["--reward", "human:b"], "jobs/d3po_labels.py --batch b"),
    ],
)
def test_jobs_refuse_bad_flags_before_building_anything(job, flags, field, tmp_path, monkeypatch, capsys):
    # In this process (the imports are paid once); test_a_refusal_exits_with_one_line runs a job file.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(sys, "argv", [job, *flags, "--runs-dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exited:
        JOBS[job]()
    stderr = capsys.readouterr().err
    message = str(exited.value.code)  # what sys.exit prints: one line, nothing else on stderr
    assert message.startswith("error: ") and "\n" not in message and not stderr.strip(), (message, stderr)
    assert field in message
    assert not (tmp_path / "o").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_job_file_refuses_a_bad_flag_without_a_traceback(tmp_path):
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "d3po.py"), "--eta", "0", "--runs-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode != 0
    assert result.stderr.startswith("error: eta=0.0 is not allowed") and result.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "mlflow.db").exists()


def test_an_unreachable_tracking_server_is_named_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setattr(sys, "argv", ["d3po.py", "--runs-dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exited:
        run_job(D3POConfig, "d3po", "")
    assert "MLFLOW_TRACKING_URI 'http://127.0.0.1:9' is unreachable" in str(exited.value.code)
    assert not (tmp_path / "o").exists()


def test_jobs_print_help():
    result = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "draft.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    assert "--lv-copies" in result.stdout and "Re-noised copies" in result.stdout


def test_best_worst_pairs_need_a_known_rule_and_one_reward():
    assert D3POConfig(pairs="best-worst", group_size=4).pairs == "best-worst"
    with pytest.raises(ValueError, match="pairs='best'"):
        D3POConfig(pairs="best")
    with pytest.raises(ValueError, match="needs one reward"):
        D3POConfig(pairs="best-worst", reward="brightness,smoothness")


def test_the_actors_a_ray_run_starts_are_named_with_kinds_it_has_none_of_left_out():
    assert D3POConfig().describe_actors() == "1 sampler(s), 1 scorer(s), 1 train worker(s)"
    assert (
        D3POConfig(samplers=2, scorers=0, train_workers=2).describe_actors()
        == "2 sampler(s), 2 train worker(s)"
    )
