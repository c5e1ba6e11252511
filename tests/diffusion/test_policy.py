import dataclasses

import torch

from rlft.configs import D3POConfig
from rlft.diffusion.policy import Policy, build_policy
from rlft.diffusion.sampling import sample_trajectories
from rlft.families.registry import denoiser_for
from rlft.world.tiny_model import build_tiny_pipeline
from rlft.zoo.loading import load_pipeline


def _perturb(policy: Policy, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def _images(pipe):
    return pipe(
        "a photo of a cat",
        num_inference_steps=6,
        height=16,
        width=16,
        output_type="pt",
        generator=torch.Generator().manual_seed(7),
    ).images


def test_saved_adapter_loads_into_a_stock_pipeline_and_gives_the_same_images(tiny_pipe, tmp_path):
    policy = Policy(tiny_pipe.unet, lora_rank=4, lora_alpha=8)  # alpha != rank: the scale must survive
    _perturb(policy)
    policy.save(tmp_path)
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
    stock = build_tiny_pipeline(0)
    base = _images(stock)
    stock.load_lora_weights(tmp_path)
    tuned = _images(tiny_pipe)
    assert (tuned - base).abs().max() > 1e-3  # the adapter changes the images...
    torch.testing.assert_close(_images(stock), tuned, rtol=0, atol=1e-6)  # ...and loads back exactly


def test_reference_is_the_same_unet_with_the_adapter_off(tiny_pipe):
    base = _images(tiny_pipe)
    policy = Policy(tiny_pipe.unet)
    assert all("lora" in n for n, p in tiny_pipe.unet.named_parameters() if p.requires_grad)
    torch.testing.assert_close(_images(tiny_pipe), base)  # B = 0 at init: policy == base
    _perturb(policy)
    with policy.reference() as reference:
        assert reference is tiny_pipe.unet  # no second copy
        torch.testing.assert_close(_images(tiny_pipe), base)
    assert (_images(tiny_pipe) - base).abs().max() > 1e-3  # adapter back on afterwards


def test_full_finetune_trains_every_weight_against_a_frozen_copy(tiny_pipe):
    base = _images(tiny_pipe)
    policy = Policy(tiny_pipe.unet, full_finetune=True)
    assert len(policy.parameters()) == len(list(tiny_pipe.unet.parameters()))
    _perturb(policy)
    with policy.reference() as reference:
        assert reference is not tiny_pipe.unet
        assert not any(p.requires_grad for p in reference.parameters())
    assert (_images(tiny_pipe) - base).abs().max() > 1e-3


def test_state_dict_moves_the_adapter_between_policies(tiny_pipe):
    trained = Policy(tiny_pipe.unet)
    _perturb(trained)
    state = trained.state_dict()
    assert all("lora" in k for k in state) and sum(v.numel() for v in state.values()) < 50_000
    other_pipe = build_tiny_pipeline(0)
    other = Policy(other_pipe.unet)
    other.load_state_dict(state)
    kwargs = dict(num_steps=5, generator=None)
    a = sample_trajectories(tiny_pipe, ["a photo of a dog"], **kwargs)["images"]
    b = sample_trajectories(other_pipe, ["a photo of a dog"], **kwargs)["images"]
    torch.testing.assert_close(a, b)


def test_a_bfloat16_models_lora_trains_in_float32_so_small_steps_are_not_rounded_away():
    pipe = load_pipeline("tiny-sd3", dtype=torch.bfloat16)
    policy = Policy(pipe.transformer, pipeline_class=type(pipe), part="transformer")
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    assert next(p for n, p in pipe.transformer.named_parameters() if "lora" not in n).dtype == torch.bfloat16
    denoiser = denoiser_for(pipe)
    cond, uncond = denoiser.encode(["a photo of a cat"])
    latents = denoiser.initial_noise(1, 32, torch.Generator().manual_seed(0))
    denoiser.set_timesteps(4)
    output = denoiser.guided(policy.model, latents, denoiser.scheduler.timesteps[1], cond, uncond, 5.0)
    assert output.dtype == torch.bfloat16
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    before = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters() if "lora_A" in n}
    output.float().square().mean().backward()
    optimizer.step()
    after = dict(pipe.transformer.named_parameters())
    moved = torch.cat([(after[n].detach() != before[n]).flatten() for n in before]).float().mean()
    assert moved > 0.99  # in bfloat16 most of these 1e-4 steps on weights of about 0.1 round to nothing


def _unet_outputs(pipe, policy: Policy) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's output for fixed inputs under the policy and under its reference."""
    denoiser = denoiser_for(pipe)
    cond, _ = denoiser.encode(["a red circle", "a blue square"])
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3)).to(pipe.unet.dtype)
    t = torch.tensor([501, 101])
    with torch.no_grad():
        with policy.reference() as reference:
            base = denoiser.call(reference, latents, t, cond)
        return denoiser.call(policy.model, latents, t, cond).float(), base.float()


def test_a_compiled_policy_gives_the_uncompiled_numbers_and_its_reference_stays_the_base(monkeypatch):
    """--compile compiles the UNet in place. Its compiled forward must follow the adapter switch (the
    reference is the same module with the adapter off) and the weights a sampler receives. Compiled with
    dynamo's graph capture and AOT autograd but not inductor's C++ code (minutes on a CPU): what can go
    wrong between the policy and its reference happens in the capture and its guards."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda m, **kw: compile_module(m, backend="aot_eager"))
    cfg = D3POConfig(ray=False, device="cpu")
    eager_pipe, eager = build_policy(cfg)
    compiled_pipe, compiled = build_policy(dataclasses.replace(cfg, compile=True))
    assert compiled_pipe.unet._compiled_call_impl is not None and eager_pipe.unet._compiled_call_impl is None
    _perturb(eager)
    compiled.load_state_dict(eager.state_dict())  # as a sampler receives new weights
    policy_out, base_out = _unet_outputs(compiled_pipe, compiled)
    assert (policy_out - base_out).abs().max() > 1e-3
    torch.testing.assert_close((policy_out, base_out), _unet_outputs(eager_pipe, eager))


def test_a_bfloat16_run_keeps_its_lora_in_float32_and_scores_as_float32_does_to_bfloat16_precision():
    cfg = D3POConfig(ray=False, device="cpu")
    pipe32, policy32 = build_policy(cfg)
    pipe16, policy16 = build_policy(dataclasses.replace(cfg, dtype="bfloat16"))
    assert pipe16.unet.dtype == pipe16.vae.dtype == pipe16.text_encoder.dtype == torch.bfloat16
    assert {p.dtype for p in policy16.parameters()} == {torch.float32}
    _perturb(policy32)
    policy16.load_state_dict(policy32.state_dict())
    for out16, out32 in zip(_unet_outputs(pipe16, policy16), _unet_outputs(pipe32, policy32), strict=True):
        assert (out16 - out32).abs().mean() < 0.02 * out32.abs().mean()
    images = denoiser_for(pipe16).decode(torch.zeros(1, 4, 4, 4))
    assert images.dtype == torch.float32  # rewards and image logs take float32
