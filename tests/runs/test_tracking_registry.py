"""The MLflow Model Registry: a run's final adapter registered under a name, found and loaded back by it."""

from dataclasses import replace

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from rlft.configs import D3POConfig
from rlft.diffusion.policy import Policy
from rlft.local import train_local
from rlft.loop import register
from rlft.runs.tracking import Tracker
from rlft.world.tiny_model import build_tiny_pipeline

TAGS = {"base_model": "tiny", "algorithm": "d3po", "reward": "jpeg-compressibility", "epochs": "1"}


def _images(pipe) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return pipe(
        "a red circle", num_inference_steps=2, height=16, width=16, output_type="pt", generator=generator
    ).images


def test_a_registered_adapter_downloads_by_name_and_loads_into_a_stock_pipeline(
    tmp_path, tiny_pipe, monkeypatch
):
    policy = Policy(tiny_pipe.unet, lora_rank=4)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a fresh LoRA changes nothing: make this one change the images
        for parameter in policy.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    policy.save(tmp_path / "adapter")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker("run", {"lr": 0.1}, {}, uri=uri) as tracker:
        tracker.log_folder(tmp_path / "adapter", "adapter")
        version = tracker.register_adapter("tiny-d3po", TAGS)
        assert tracker.register_adapter("tiny-d3po", TAGS) == version  # a finished run started again
    registered = MlflowClient(uri).get_model_version("tiny-d3po", version)
    assert version == "1" and registered.tags == TAGS and registered.run_id == tracker.run_id

    # The docs' way back: with MLFLOW_TRACKING_URI set as it was in training.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    folder = mlflow.artifacts.download_artifacts(
        f"models:/tiny-d3po/{version}", dst_path=str(tmp_path / "got")
    )
    stock = build_tiny_pipeline(0)
    stock.set_progress_bar_config(disable=True)
    base = _images(stock)
    stock.load_lora_weights(folder)
    tuned = _images(tiny_pipe)
    assert (tuned - base).abs().max() > 1e-3
    torch.testing.assert_close(_images(stock), tuned, rtol=0, atol=1e-6)


def test_a_run_with_register_model_registers_its_final_adapter_and_says_so(tmp_path):
    cfg = D3POConfig(epochs=1, eval_images=4, pairs_per_epoch=2, num_steps=3, batch_size=3, threads=1)
    lines = []
    with Tracker("run", cfg, {}, uri=f"sqlite:///{tmp_path / 'mlflow.db'}") as tracker:
        train_local(replace(cfg, register_model="tiny-d3po"), tmp_path / "run", tracker, lines.append)
    assert (
        "registered the adapter in the MLflow Model Registry: tiny-d3po version 1 (models:/tiny-d3po/1)"
        in lines
    )
    (registered,) = MlflowClient(tracker.uri).search_model_versions("name = 'tiny-d3po'")
    assert registered.tags == TAGS and registered.run_id == tracker.run_id
    assert registered.source == f"runs:/{tracker.run_id}/adapter"


def test_without_tracking_there_is_nothing_to_register_from():
    with pytest.raises(ValueError, match="register_model='tiny-d3po' is not allowed: a model name without"):
        D3POConfig(register_model="tiny-d3po", track=False)
    lines = []  # the library's loop given no tracker says so
    register(D3POConfig(register_model="tiny-d3po"), None, lines.append)
    assert lines == ["register_model='tiny-d3po': not registered, no MLflow run (tracking is off)"]


@pytest.mark.parametrize("name", ["it's-mine", 'a "quoted" name', "  "])
def test_a_model_name_with_a_quote_or_nothing_in_it_is_refused_before_anything_starts(name):
    with pytest.raises(ValueError, match=r"register_model=.* is not allowed: a model name without quotes"):
        D3POConfig(register_model=name)
