"""sd35-random and flux-random: the published shapes (counted on the meta device, which allocates nothing),
and, one layer deep but at full width, prompts encode to the real sequence shapes and sampling runs."""

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from rlft.configs import D3POConfig
from rlft.diffusion.sampling import sample_trajectories
from rlft.families.registry import denoiser_for
from rlft.zoo import full_size
from rlft.zoo.loading import load_pipeline


def _billions(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


def test_sd35_random_has_the_published_parameter_counts_of_sd35_large():
    pipe = load_pipeline("sd35-random", device="meta", dtype=torch.bfloat16)
    assert isinstance(pipe, StableDiffusion3Pipeline)
    assert _billions(pipe.transformer) == pytest.approx(8.06, abs=0.01)  # "8.1 billion parameters"
    assert _billions(pipe.text_encoder_3) == pytest.approx(4.76, abs=0.01)  # T5-XXL's encoder
    assert _billions(pipe.text_encoder_2) == pytest.approx(0.695, abs=0.001)  # OpenCLIP bigG/14
    assert _billions(pipe.text_encoder) == pytest.approx(0.124, abs=0.001)  # CLIP ViT-L/14
    assert next(pipe.transformer.parameters()).dtype == torch.bfloat16
    assert denoiser_for(pipe).default_resolution == 1024
    assert full_size.build_sd35_random(device="meta", with_t5=False).text_encoder_3 is None


def test_flux_random_has_the_published_parameter_counts_of_flux1_dev():
    pipe = load_pipeline("flux-random", device="meta", dtype=torch.bfloat16)
    assert isinstance(pipe, FluxPipeline)
    assert _billions(pipe.transformer) == pytest.approx(11.90, abs=0.01)  # "12 billion parameters"
    assert pipe.transformer.config.guidance_embeds
    assert _billions(pipe.text_encoder_2) == pytest.approx(4.76, abs=0.01)
    assert denoiser_for(pipe).default_resolution == 1024


@pytest.mark.parametrize("name", ["sd35-random", "flux-random"])
def test_a_full_size_model_on_a_cpu_is_refused_before_anything_is_built(name):
    with pytest.raises(ValueError, match=f"device='cpu' is not allowed: 'cuda' or 'auto' for {name}"):
        D3POConfig(model=name, device="cpu", ray=False, track=False)
    with pytest.raises(ValueError, match=f"model '{name}' is for GPU memory and speed work.*device='cuda'"):
        load_pipeline(name, device="cpu")  # 'auto' where torch sees no GPU


@pytest.fixture
def one_layer_deep(monkeypatch):
    """The full-size builders one block deep, with narrow feed-forward layers inside the text encoders and
    a shallow VAE (bf16 matrix products crawl on a CPU: the two tests took 19 minutes of a full CI run
    before): every width, vocabulary and sequence length a prompt embedding or latent shows is kept."""
    monkeypatch.setitem(full_size.SD35_LARGE_TRANSFORMER, "num_layers", 1)
    monkeypatch.setitem(full_size.FLUX_DEV_TRANSFORMER, "num_layers", 1)
    monkeypatch.setitem(full_size.FLUX_DEV_TRANSFORMER, "num_single_layers", 1)
    monkeypatch.setitem(full_size.T5_XXL, "num_layers", 1)
    monkeypatch.setitem(full_size.CLIP_L, "num_hidden_layers", 1)
    monkeypatch.setitem(full_size.CLIP_BIG_G, "num_hidden_layers", 1)
    monkeypatch.setitem(full_size.T5_XXL, "d_ff", 64)
    monkeypatch.setitem(full_size.CLIP_BIG_G, "intermediate_size", 64)
    monkeypatch.setitem(full_size.CLIP_L, "intermediate_size", 64)
    monkeypatch.setitem(full_size.VAE_16, "layers_per_block", 1)  # bf16 convolutions crawl on a CPU


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, sequence, pooled", [("sd35-random", 77 + 256, 2048), ("flux-random", 512, 768)]
)
def test_at_full_width_prompts_encode_to_the_real_shapes_and_sampling_runs_in_bf16(
    one_layer_deep, name, sequence, pooled
):
    pipe = full_size.FULL_SIZE[name](device="cpu", dtype=torch.bfloat16)
    cond, _ = denoiser_for(pipe).encode(["a photo of a cat"])
    assert cond["embeds"].shape == (1, sequence, 4096) and cond["pooled"].shape == (1, pooled)
    # 32 px (4x4 latents), one step: a 128 px decode by the full-width VAE alone took minutes in bf16.
    out = sample_trajectories(pipe, ["a photo of a cat"], num_steps=1, resolution=32, eta=1.0)
    assert out["latents"].shape == (1, 2, 16, 4, 4) and out["log_probs"].dtype == torch.float32
    assert out["images"].shape == (1, 3, 32, 32) and torch.isfinite(out["images"]).all()
