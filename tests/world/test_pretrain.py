"""Pretraining the tiny model: deterministic, loadable as --model tiny, the moving average unbiased."""

import json

import torch

from rlft.world.pretrain import PretrainSettings, pretrain, unbias_ema, warmup_cosine
from rlft.world.tiny_model import load_tiny_pretrained

TINY_RUN = PretrainSettings(images=64, vae_steps=2, vae_batch=4, unet_steps=3, unet_batch=4, log_every=1)


def test_a_short_run_is_deterministic_and_loads_as_the_tiny_model(tmp_path):
    lines = []
    pretrain(TINY_RUN, tmp_path / "a", log=lines.append)
    pretrain(TINY_RUN, tmp_path / "b", log=lambda line: None)
    assert any(line.startswith("vae  step      2/2 | loss") for line in lines)
    assert any(line.startswith("unet step      3/3 | loss") for line in lines)
    for name in ("unet", "vae", "text_encoder"):
        assert (tmp_path / "a" / f"{name}.safetensors").read_bytes() == (
            tmp_path / "b" / f"{name}.safetensors"
        ).read_bytes(), name
    record = json.loads((tmp_path / "a" / "model.json").read_text())
    assert record["metrics"]["unet_steps_run"] == 3 and record["settings"]["images"] == 64
    assert set(record["sha256"]) == {"unet.safetensors", "vae.safetensors", "text_encoder.safetensors"}
    pipe = load_tiny_pretrained(tmp_path / "a")
    assert pipe.vae.config.scaling_factor == record["scaling_factor"]
    image = pipe("a small red circle on a plain blue background", num_inference_steps=2, output_type="pt")
    assert image.images.shape == (1, 3, 32, 32)


def test_unbiasing_removes_the_initial_weights_share_of_the_moving_average():
    # After 3 updates at decay 0.5 the first copy weighs 0.5 ** 2 = 0.25: average = 0.25 * 1 + 0.75 * 5.
    initial, trained = {"w": torch.tensor([1.0])}, torch.tensor([5.0])
    average = {"w": 0.25 * initial["w"] + 0.75 * trained, "steps": torch.tensor(3)}
    unbiased = unbias_ema(average, initial, decay=0.5, updates=3)
    torch.testing.assert_close(unbiased["w"], trained)
    assert unbiased["steps"] == 3  # integer buffers are left alone
    assert unbias_ema(average, initial, decay=0.5, updates=1) is average


def test_the_learning_rate_warms_up_then_falls_along_a_cosine_to_a_tenth():
    # 1,000 steps: 200 of warm-up, then 799 intervals of cosine from 1 to 0.1.
    assert warmup_cosine(0, 1000) == 1 / 200 and warmup_cosine(199, 1000) == 1.0
    assert warmup_cosine(200, 1000) == 1.0
    assert abs(warmup_cosine(200 + 799 // 2, 1000) - 0.55) < 0.002  # half-way: (1 + 0.1) / 2
    assert abs(warmup_cosine(999, 1000) - 0.1) < 1e-12
    assert warmup_cosine(5000, 1000) == warmup_cosine(999, 1000)  # past the end: stays at the floor
