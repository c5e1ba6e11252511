"""SDXL, SD3 and FLUX through the code written once for every family: sampling equals the stock pipelines,
adapters load into them, pairs share x_T, the recorded log-probabilities are the ones training recomputes,
and D3PO's learner moves each family towards the preferred steps."""

import json
import math

import pytest
import torch

from rlft.algorithms.d3po import D3POLearner
from rlft.algorithms.draft_losses import draft_k_loss
from rlft.algorithms.pairs import pair_items
from rlft.configs import D3POConfig
from rlft.diffusion.policy import Policy, build_policy
from rlft.diffusion.sampling import sample_trajectories
from rlft.families.registry import DENOISERS, FluxDenoiser, SD3Denoiser, XLDenoiser, denoiser_for
from rlft.rewards.registry import brightness
from rlft.zoo.loading import load_pipeline
from rlft.zoo.names import SUPPORTED_PIPELINES
from rlft.zoo.tiny_sdxl_sd3_flux import TINY_FAMILIES, build_tiny_sd3

PROMPTS = ["a photo of a cat", "a red circle"]
FAMILIES = list(TINY_FAMILIES)


def _pipe(name: str, seed: int = 0):
    pipe = load_pipeline(name, seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stock_images(pipe, eta: float, seed: int = 3):
    """The stock pipeline's own sampling loop; DDIM takes `eta`, the flow-matching pipeline has no SDE."""
    extra = {"eta": eta} if hasattr(pipe, "unet") else {}
    out = pipe(
        PROMPTS,
        num_inference_steps=6,
        height=32,
        width=32,
        guidance_scale=5.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )
    return out.images


def _our_images(pipe, eta: float, seed: int = 3):
    out = sample_trajectories(
        pipe,
        PROMPTS,
        num_steps=6,
        eta=eta,
        guidance_scale=5.0,
        with_logprob=eta > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    return out["images"]


@pytest.mark.parametrize("name", FAMILIES)
def test_the_families_are_their_pipelines_classes(name):
    pipe = _pipe(name)
    expected = {"tiny-sdxl": XLDenoiser, "tiny-sd3": SD3Denoiser, "tiny-flux": FluxDenoiser}[name]
    assert type(denoiser_for(pipe)) is expected
    assert not any(p.requires_grad for p in denoiser_for(pipe).model.parameters())


def test_every_pipeline_class_a_folder_may_hold_has_a_family_and_an_unknown_one_is_refused_by_name():
    assert tuple(DENOISERS) == SUPPORTED_PIPELINES  # the zoo checks folders against the same classes

    class KandinskyPipeline:
        pass

    with pytest.raises(ValueError, match="class KandinskyPipeline is not supported; supported: Stable"):
        denoiser_for(KandinskyPipeline())


@pytest.mark.parametrize(
    "name, eta", [("tiny-sdxl", 1.0), ("tiny-sdxl", 0.0), ("tiny-sd3", 0.0), ("tiny-flux", 0.0)]
)
def test_sampling_equals_the_stock_pipeline_for_the_same_seed(name, eta):
    """DDIM at eta 1 draws the same noise in the same order; the flow SDE at noise level 0 is the stock
    pipeline's Euler sampler."""
    pipe = _pipe(name)
    torch.testing.assert_close(_our_images(pipe, eta), _stock_images(pipe, eta), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_saved_adapter_loads_into_the_stock_pipeline_and_gives_the_policys_images(name, tmp_path):
    pipe = _pipe(name)
    denoiser = denoiser_for(pipe)
    policy = Policy(denoiser.model, pipeline_class=type(pipe), part=denoiser.model_part, lora_alpha=8)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    policy.save(tmp_path)
    stock = TINY_FAMILIES[name](0)
    stock.set_progress_bar_config(disable=True)
    base = _stock_images(stock, eta=0.0)
    stock.load_lora_weights(tmp_path)
    tuned = _our_images(pipe, eta=0.0)
    assert (tuned - base).abs().max() > 1e-3  # the adapter changes the images...
    torch.testing.assert_close(_stock_images(stock, eta=0.0), tuned, atol=1e-5, rtol=0)  # ...and loads back


def test_sd3_with_t5_samples_as_its_stock_pipeline_and_the_prompt_reaches_t5():
    """SD3's third text encoder, which the stock checkpoints have and tiny-sd3 leaves out."""
    pipe = build_tiny_sd3(0, with_t5=True)
    pipe.set_progress_bar_config(disable=True)
    ours = _our_images(pipe, 0.0)
    torch.testing.assert_close(ours, _stock_images(pipe, 0.0), atol=1e-5, rtol=0)
    with torch.no_grad():
        pipe.text_encoder_3.shared.weight.mul_(2.0)  # the T5 token embeddings
    assert (_our_images(pipe, 0.0) - ours).abs().max() > 1e-4


def test_sd3_groups_share_x_t_and_the_recorded_log_probs_are_the_ones_training_recomputes():
    pipe = _pipe("tiny-sd3")
    out = sample_trajectories(pipe, PROMPTS, group_size=2, num_steps=4, eta=0.7)
    x_T = out["latents"][:, 0]
    assert torch.equal(x_T[0], x_T[1]) and not torch.equal(x_T[0], x_T[2])
    assert not torch.equal(out["latents"][0, -1], out["latents"][1, -1])  # the SDE is stochastic
    denoiser = denoiser_for(pipe)
    cond, uncond = denoiser.encode(PROMPTS)
    cond = cond.take(out["group"])
    for i, t in enumerate(out["timesteps"]):
        x = out["latents"][:, i]
        velocity = denoiser.guided(denoiser.model, x, t, cond, uncond, 5.0)
        log_prob = denoiser.step_with_logprob(velocity, t, x, eta=0.7, prev_sample=out["latents"][:, i + 1])[
            1
        ]
        torch.testing.assert_close(log_prob, out["log_probs"][:, i])


@pytest.mark.parametrize("name", FAMILIES)
def test_d3pos_learner_moves_each_family_towards_the_preferred_steps(name):
    pipe = _pipe(name)
    denoiser = denoiser_for(pipe)
    policy = Policy(denoiser.model, pipeline_class=type(pipe), part=denoiser.model_part)
    prompts = ["a photo of a cat"] * 4
    out = sample_trajectories(
        pipe, prompts, group_size=2, num_steps=4, generator=torch.Generator().manual_seed(0)
    )
    index_w = torch.tensor([0, 2, 4, 6])  # arbitrary preferences: the first member of each group wins
    items = pair_items(out["latents"], out["group"], out["timesteps"], index_w, index_w + 1)
    cond, uncond = denoiser.encode(prompts)
    learner = D3POLearner(policy, denoiser, lr=1e-2, beta=10.0, clip=0.5, guidance_scale=5.0, eta=1.0)
    first = learner.step(items, cond, uncond)
    assert abs(first["loss"] - math.log(2)) < 1e-6  # policy == reference at the start
    for _ in range(15):
        last = learner.step(items, cond, uncond)
    # Measured: in 16 steps FLUX's loss falls steadily to 0.648; SD3's and SDXL's lower, less smoothly.
    assert last["loss"] < math.log(2) - 0.02
    assert last["preference_accuracy"] > 0.5


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_a_saved_flow_matching_folder_loads_as_its_class(name, tmp_path):
    """SD3 without T5 (diffusers allows it) and FLUX with its tokenizers, through from_pretrained."""
    pipe = _pipe(name)
    pipe.save_pretrained(tmp_path)
    loaded = load_pipeline(str(tmp_path))
    assert type(loaded) is type(pipe) and type(loaded.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    if name == "tiny-sd3":
        assert loaded.text_encoder_3 is None
    else:
        loaded.default_sample_size = pipe.default_sample_size  # an attribute, not saved: FLUX's is 128
    torch.testing.assert_close(_our_images(loaded, 0.0), _our_images(pipe, 0.0))


def test_a_pipeline_class_rlft_does_not_train_is_refused_naming_it_and_the_supported_ones(tmp_path):
    _pipe("tiny-sdxl").save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps(index | {"_class_name": "KandinskyPipeline"}))
    with pytest.raises(
        ValueError,
        match="pipeline class KandinskyPipeline is not supported; supported: StableDiffusionPipeline, "
        "StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline",
    ):
        load_pipeline(str(tmp_path))


def test_denoiser_for_refuses_a_pipeline_of_another_family_naming_every_supported_one():
    class KandinskyPipeline:
        pass

    supported = "StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline"
    with pytest.raises(
        ValueError, match=f"pipeline class KandinskyPipeline is not supported; supported: {supported}"
    ):
        denoiser_for(KandinskyPipeline())


def test_build_policy_trains_the_transformer_of_sd3_with_gradient_checkpointing_if_asked():
    cfg = D3POConfig(model="tiny-sd3", ray=False, track=False, gradient_checkpointing=True)
    pipe, policy = build_policy(cfg)
    assert policy.model is pipe.transformer and policy.part == "transformer"
    lora = [n for n, p in pipe.transformer.named_parameters() if p.requires_grad]
    assert lora and all("lora" in n for n in lora)
    assert pipe.transformer.gradient_checkpointing


@pytest.mark.parametrize("name", FAMILIES)
def test_gradient_checkpointing_gives_the_same_draft_gradient(name):
    grads = []
    for checkpointing in (False, True):
        pipe = _pipe(name)
        denoiser = denoiser_for(pipe)
        policy = Policy(denoiser.model, pipeline_class=type(pipe), part=denoiser.model_part)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        if checkpointing:
            denoiser.model.enable_gradient_checkpointing()
        cond, uncond = denoiser.encode(PROMPTS)
        timesteps = denoiser.set_timesteps(3, 32)
        x_T = denoiser.initial_noise(2, 32, torch.Generator().manual_seed(0))
        loss, _ = draft_k_loss(
            denoiser, policy.model, brightness, x_T, timesteps[1:], cond, uncond, guidance_scale=3.0
        )
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0])
