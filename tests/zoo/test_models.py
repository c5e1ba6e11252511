import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlft.diffusion.sampling import sample_trajectories
from rlft.world.tiny_model import TINY_MODEL_FOLDER, build_tiny_pipeline
from rlft.zoo.loading import load_pipeline
from rlft.zoo.names import check_model_name

FIRST_SAMPLE = Path(__file__).parents[1] / "data" / "tiny_first_sample.png"
FIRST_PROMPT = "a large red circle on a plain blue background"


def first_sample() -> np.ndarray:
    """The shipped tiny model's sample of FIRST_PROMPT from noise seed 0: (32, 32, 3) uint8."""
    pipe = load_pipeline("tiny")
    generator = torch.Generator().manual_seed(0)
    out = sample_trajectories(
        pipe, [FIRST_PROMPT], num_steps=20, eta=0.0, generator=generator, with_logprob=False
    )
    return (out["images"][0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def test_the_shipped_tiny_model_is_the_recorded_one_and_reproduces_its_first_sample():
    folder = Path(str(TINY_MODEL_FOLDER))
    record = json.loads((folder / "model.json").read_text())
    for name, digest in record["sha256"].items():  # recorded by rlft.world.pretrain.save_model
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    stored = np.asarray(Image.open(FIRST_SAMPLE).convert("RGB")).astype(int)
    # The same weights and noise give the same image; a different CPU may round a pixel differently.
    assert np.abs(first_sample().astype(int) - stored).max() <= 2


@pytest.mark.parametrize(
    "name, message",
    [
        ("./no/such/folder", "does not exist"),
        ("/tmp/rlft-missing-model", "does not exist"),
        ("not a model", "is not allowed"),
        ("tiny-model", "is not allowed"),
        ("owner/name/extra", "does not exist"),
        ("", "is empty"),
    ],
)
def test_bad_model_names_fail_before_building(name, message, monkeypatch):
    built = []
    monkeypatch.setattr("rlft.zoo.loading.build_tiny_pipeline", lambda *a, **k: built.append(1))
    with pytest.raises(ValueError, match=message):
        load_pipeline(name)
    assert not built


def test_names_that_are_allowed(tmp_path):
    assert check_model_name("tiny") == "tiny"
    assert check_model_name("tiny-random") == "tiny-random"
    assert check_model_name("sd15-random") == "sd15-random"
    assert check_model_name("stable-diffusion-v1-5/stable-diffusion-v1-5") == "hub"
    with pytest.raises(ValueError, match="no model_index.json"):
        check_model_name(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="model_index.json is not JSON"):
        check_model_name(str(tmp_path))
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(ValueError, match="not a loadable pipeline: no unet, vae, text_encoder, tokenizer"):
        check_model_name(str(tmp_path))


def test_tiny_model_is_deterministic_from_its_seed():
    a, b, c = build_tiny_pipeline(0), build_tiny_pipeline(0), build_tiny_pipeline(1)
    for name, weight in a.unet.state_dict().items():
        assert torch.equal(weight, b.unet.state_dict()[name])
    assert not torch.equal(a.unet.conv_in.weight, c.unet.conv_in.weight)
    assert not torch.equal(a.vae.decoder.conv_out.weight, c.vae.decoder.conv_out.weight)


def test_local_folder_loads_through_from_pretrained(tmp_path):
    pipe = build_tiny_pipeline(3)
    pipe.save_pretrained(tmp_path)
    assert check_model_name(str(tmp_path)) == "folder"
    loaded = load_pipeline(str(tmp_path))
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert not any(p.requires_grad for p in loaded.unet.parameters())
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    kwargs = dict(num_inference_steps=4, height=16, width=16, output_type="pt")
    original = pipe("a photo of a cat", generator=generator(), **kwargs).images
    again = loaded("a photo of a cat", generator=generator(), **kwargs).images
    torch.testing.assert_close(again, original)


@pytest.mark.slow
def test_sd15_random_has_the_sd15_unet():
    pipe = load_pipeline("sd15-random")
    params = sum(p.numel() for p in pipe.unet.parameters())
    assert 855e6 < params < 865e6  # SD 1.5's UNet: 860 M
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == 64


def test_tiny_tokenizer_is_identical_every_time():
    from rlft.world.tiny_model import build_tiny_tokenizer

    ids = {tuple(build_tiny_tokenizer()("a photo of a dog, unseen words!").input_ids) for _ in range(5)}
    assert len(ids) == 1


def test_a_bfloat16_tiny_model_loads_without_diffusers_empty_float32_warning(caplog):
    pipe = load_pipeline("tiny", dtype=torch.bfloat16)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
    assert "should be kept in float32" not in caplog.text  # "...: []", once per model in every process
