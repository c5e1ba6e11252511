import torch

from rlft.diffusion.families import denoiser_for
from rlft.diffusion.loading import load_pipeline
from rlft.diffusion.models import build_tiny_pipeline
from rlft.diffusion.policy import Policy
from rlft.diffusion.sampling import sample_trajectories


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
