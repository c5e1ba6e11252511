"""The front door: the `rlft` command, recipes, refusals in one line at any width, and the checks (the hub,
the GPUs) before anything starts. The dry run's plan: tests/test_plan.py."""

import http.server
import json
import os
import subprocess
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import ray

from rlft import cli
from rlft.configs import D3POConfig, DDPOConfig, DRaFTConfig
from rlft.configs.flags import Refused, parse_config
from rlft.configs.recipes import load_recipe, shipped_recipes
from rlft.feedback.sample_groups import SampleGroupsConfig

ROOT = Path(__file__).resolve().parents[1]
JOBS = {"d3po": D3POConfig, "draft": DRaFTConfig, "ddpo": DDPOConfig, "sample-groups": SampleGroupsConfig}


def recipe_job(name: str) -> str:
    return next(line.split('"')[1] for line in recipe_text(name).splitlines() if line.startswith("job ="))


def recipe_text(name: str) -> str:
    return (ROOT / "rlft" / "recipes" / f"{name}.toml").read_text()


def refusal(command: str, args: list[str], tmp_path: Path, monkeypatch, capsys) -> str:
    """What `rlft <command> args` exits with, having left no run folder and no MLflow store behind."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [] if command == "sample-groups" else ["--runs-dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as exited:
        cli.main([command, *args, *runs])
    message = str(exited.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    assert not capsys.readouterr().err.strip()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    assert not ray.is_initialized()
    return message


def test_the_rlft_entry_point_is_the_cli():
    (point,) = entry_points(group="console_scripts", name="rlft")
    assert point.value == "rlft.cli:main" and point.load() is cli.main


def test_rlft_lists_its_commands_and_recipes(capsys):
    cli.main([])
    usage = capsys.readouterr().out
    assert all(name in usage for name in ("d3po", "train-labels", "pretrain-tiny"))
    cli.main(["recipes"])
    out = capsys.readouterr().out
    assert "sdxl-d3po-pickscore" in out and "flux-dev-draft-k-pickscore" in out
    with pytest.raises(SystemExit, match="unknown command 'd3p0'"):
        cli.main(["d3p0"])


@pytest.mark.parametrize("columns", ["40", "80", "100", "250"])
def test_a_refusal_is_one_line_naming_the_field_at_any_width(columns, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)  # the width tyro would draw its box at
    kandinsky = tmp_path / "weird"
    kandinsky.mkdir()
    (kandinsky / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    cases = {
        ("--model", str(kandinsky)): "pipeline class KandinskyPipeline is not supported; supported: Stable",
        ("--eta", "0"): "eta=0.0 is not allowed: > 0",
        ("--epochs", "x"): "--epochs: invalid literal for int() with base 10: 'x'",
        ("--no-such-flag",): "unknown flag --no-such-flag",
        ("--pipeline", "sometimes"): "--pipeline 'sometimes' is not allowed: one of auto, on, off",
    }
    for args, message in cases.items():
        with pytest.raises(Refused) as refused:
            parse_config(D3POConfig, "d3po", list(args))
        assert message in str(refused.value) and "\n" not in str(refused.value), str(refused.value)


def test_a_job_refuses_through_a_pipe_in_one_line_at_80_columns(tmp_path):
    env = os.environ | {"COLUMNS": "80", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = subprocess.run(
        [sys.executable, "-m", "rlft.cli", "d3po", "--model", str(tmp_path / "nowhere" / "x")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: model folder '{tmp_path / 'nowhere' / 'x'}' does not exist")


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_builds_its_config_on_real_prompt_sets(name):
    job = recipe_job(name)
    cfg = parse_config(
        JOBS[job], job, ["--config", name, *(["--out", "x"] if job == "sample-groups" else [])]
    )
    assert cfg.model != "tiny" and "/" in cfg.model  # a real model, by hub id
    assert cfg.prompts != "shapes" and getattr(cfg, "eval_prompts", "") != "shapes-eval"
    assert getattr(cfg, "device", "cuda") == "cuda"
    # each number says where it comes from: a comment on its line or just above it
    lines = recipe_text(name).splitlines()
    for key in ("lr", "num_steps", "resolution", "lora_rank"):
        for i, line in enumerate(lines):
            if line.startswith(f"{key} ="):
                assert "#" in line or lines[i - 1].startswith("#"), (name, key)


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_recipe_refuses_offline_naming_its_uncached_model(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    job = recipe_job(name)
    args = ["--config", name] + (["--out", str(tmp_path / "batch")] if job == "sample-groups" else [])
    model = parse_config(JOBS[job], job, args).model
    message = refusal(job, args, tmp_path, monkeypatch, capsys)
    assert f"model {model!r}: cannot load {model}" in message and "HF_HUB_OFFLINE is set" in message
    assert not (tmp_path / "batch").exists()


def test_flags_override_a_recipe_and_a_recipe_overrides_the_defaults(tmp_path):
    recipe = tmp_path / "mine.toml"
    recipe.write_text(
        'job = "d3po"\nlr = 1e-4\nepochs = 3\nlora_targets = ["to_q", "to_v"]\n'
        "gradient_checkpointing = true\n"
    )
    cfg = parse_config(D3POConfig, "d3po", ["--config", str(recipe), "--epochs", "5"])
    assert (cfg.lr, cfg.epochs, cfg.lora_targets, cfg.gradient_checkpointing) == (
        1e-4,
        5,
        ("to_q", "to_v"),
        True,
    )
    assert cfg.config == str(recipe)


@pytest.mark.parametrize(
    "text, message",
    [
        ('job = "d3po"\nlearning_rate = 1e-4\n', "unknown key 'learning_rate'"),
        ('job = "d3po"\nlr = "fast"\n', "lr = 'fast' is not a float"),
        ('job = "d3po"\nepochs = 2.5\n', "epochs = 2.5 is not an int"),
        ('job = "d3po"\ndtype = "float16"\n', "dtype = 'float16' is not one of 'float32', 'bfloat16'"),
        ('job = "draft"\nlr = 1e-4\n', "job = 'draft', but this command is 'd3po' (run `rlft draft`)"),
        ("lr = [\n", "not TOML"),
    ],
)
def test_a_bad_recipe_is_refused_naming_the_file_and_the_key(text, message, tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    refused = refusal("d3po", ["--config", str(recipe)], tmp_path, monkeypatch, capsys)
    assert f"recipe {recipe}" in refused and message in refused, refused


def test_a_missing_recipe_names_the_shipped_ones():
    with pytest.raises(
        ValueError, match="config='sdxl-d3po' is not allowed: no such file and no shipped recipe"
    ):
        load_recipe("sdxl-d3po", "d3po", D3POConfig)


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The hub's model API for three repositories: one missing, one gated, one public and gated-free."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        repo = self.path.removeprefix("/api/models/").split("/revision")[0].split("?")[0]
        if repo == "someone/missing":
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            body = b'{"error": "Repository not found"}'
        else:
            self.send_response(200)
            body = json.dumps({"id": repo, "sha": "0" * 40, "gated": "manual" if "gated" in repo else False})
            body = body.encode()
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    yield
    server.shutdown()


def test_a_misspelled_or_gated_hub_model_is_refused_before_anything_starts(
    fake_hub, tmp_path, monkeypatch, capsys
):
    message = refusal("d3po", ["--model", "someone/missing"], tmp_path, monkeypatch, capsys)
    assert "'someone/missing' is not on the Hugging Face hub (a typo?" in message
    message = refusal("d3po", ["--model", "someone/gated-model"], tmp_path, monkeypatch, capsys)
    assert "'someone/gated-model' is gated" in message and "HF_TOKEN" in message


def test_an_unsupported_cached_pipeline_class_is_refused_offline(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "hf"
    snapshot = cache / "models--someone--kandinsky" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    (cache / "models--someone--kandinsky" / "refs").mkdir()
    (cache / "models--someone--kandinsky" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    message = refusal("d3po", ["--model", "someone/kandinsky"], tmp_path, monkeypatch, capsys)
    assert "model 'someone/kandinsky': pipeline class KandinskyPipeline is not supported" in message


def test_a_gpu_run_on_a_machine_without_one_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("ray._private.utils.read_ray_address", lambda *a: None)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert "device='cuda' is not allowed: this machine has no CUDA GPU" in refusal(
        "draft", ["--device", "cuda"], tmp_path, monkeypatch, capsys
    )
    gpu_recipe = tmp_path / "gpu.toml"
    gpu_recipe.write_text('job = "d3po"\ndevice = "cuda"\nsampler_gpus = 1.0\nworker_gpus = 1.0\n')
    assert "device='cuda' is not allowed: this machine has no CUDA GPU" in refusal(
        "d3po", ["--config", str(gpu_recipe)], tmp_path, monkeypatch, capsys
    )
    assert "model='flux-random' is not allowed: it is for GPU work" in refusal(
        "d3po", ["--model", "flux-random"], tmp_path, monkeypatch, capsys
    )
    assert "sampler_gpus=1.0 is not allowed: no node" in refusal(
        "ddpo", ["--sampler-gpus", "1"], tmp_path, monkeypatch, capsys
    )


def test_pretrain_tiny_never_writes_over_a_model(tmp_path, monkeypatch):
    shipped = ROOT / "rlft" / "world" / "tiny_weights"
    with pytest.raises(SystemExit, match="the shipped model is there"):
        cli.main(["pretrain-tiny", "--out", str(shipped)])
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(SystemExit, match="it already holds a model"):
        cli.main(["pretrain-tiny", "--out", str(tmp_path)])


def test_the_summary_says_how_to_open_the_runs_in_mlflow():
    from rlft.job import mlflow_ui_command

    assert mlflow_ui_command("sqlite:////home/me/mlflow.db") == (
        "mlflow ui --backend-store-uri sqlite:////home/me/mlflow.db  # then open http://127.0.0.1:5000"
    )
    assert mlflow_ui_command("http://user:secret@mlflow:5000").startswith("open http://***@mlflow:5000")


@pytest.mark.slow
def test_a_non_editable_install_runs_rlft_d3po_from_any_folder_with_the_embedded_model(tmp_path):
    target, elsewhere = tmp_path / "installed", tmp_path / "elsewhere"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            target,
            ROOT,
        ],
        check=True,
        timeout=600,
    )
    elsewhere.mkdir()
    env = os.environ | {
        "PYTHONPATH": str(target),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    flags = ["--no-ray", "--epochs", "1", "--pairs-per-epoch", "2", "--eval-images", "2", "--threads", "1"]
    result = subprocess.run(
        [target / "bin" / "rlft", "d3po", *flags, "--run-name", "installed"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=elsewhere,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model tiny" in result.stdout and "eval reward: base" in result.stdout
    assert (elsewhere / "runs" / "installed" / "adapter").is_dir()
    where = subprocess.run(
        [sys.executable, "-c", "import rlft; print(rlft.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
    )
    assert where.stdout.startswith(str(target))  # the installed copy ran, not this checkout
