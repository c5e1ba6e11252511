"""Micro-batches: an optimizer step whose gradient is accumulated over pieces of the batch is the step on the
whole batch (same gradient, weights and metrics, to float64 rounding), for D3PO, DDPO and every DRaFT variant;
a micro_batch that does not divide a worker's share of the batch is refused naming the field."""

import pytest
import torch

from rlft.algorithms.backend import micro_batches
from rlft.algorithms.d3po import D3POLearner
from rlft.algorithms.ddpo import DDPOLearner, ddpo_items
from rlft.algorithms.draft import DRaFTLearner
from rlft.algorithms.draft_losses import draft_k_loss
from rlft.algorithms.pairs import pair_items
from rlft.configs import D3POConfig, DDPOConfig, DRaFTConfig
from rlft.diffusion.policy import Policy
from rlft.diffusion.sampling import sample_trajectories
from rlft.families.registry import denoiser_for
from rlft.feedback import labels_config
from rlft.rewards.registry import smoothness

PROMPTS = ["a photo of a cat", "a photo of a dog", "a red circle", "a blue square"]


def test_micro_batches_cut_the_batch_in_order_and_give_each_piece_its_share_of_the_items():
    batch = {"x": torch.arange(5), "y": torch.arange(5) * 10}
    pieces = micro_batches(batch, 2)
    assert [p["x"].tolist() for p, _ in pieces] == [[0, 1], [2, 3], [4]]
    assert [p["y"].tolist() for p, _ in pieces] == [[0, 10], [20, 30], [40]]
    assert [share for _, share in pieces] == [0.4, 0.4, 0.2]
    (whole, share), *rest = micro_batches(batch, None)
    assert not rest and share == 1 and whole["x"].tolist() == [0, 1, 2, 3, 4]


def _sampled_float64(tiny_pipe, group_size: int) -> tuple:
    """Trajectories of the tiny model (sampled in float32), then its UNet and VAE in float64, a LoRA policy
    moved away from the reference (so ratios differ and some are clamped or clipped), and the prompts'
    conditioning in float64 (CLIP's attention mask cannot be built in float64)."""
    out = sample_trajectories(
        tiny_pipe, PROMPTS, group_size=group_size, num_steps=3, generator=torch.Generator().manual_seed(0)
    )
    denoiser, policy, cond, uncond, _ = _float64_policy(tiny_pipe, seed=1, scale=0.2)
    return out, denoiser, policy, cond, uncond


def _float64_policy(tiny_pipe, seed: int, scale: float) -> tuple:
    """The tiny model's denoiser in float64, a LoRA policy moved `scale` away from the reference, the
    prompts' conditioning in float64, and the generator that moved it (for more draws)."""
    denoiser = denoiser_for(tiny_pipe)
    cond, uncond = (c.to(torch.float64) for c in denoiser.encode(PROMPTS))
    denoiser.model.double(), tiny_pipe.vae.double()
    policy = Policy(denoiser.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return denoiser, policy, cond, uncond, g


def _float64(items: dict) -> dict:
    return {k: v.double() if v.is_floating_point() else v for k, v in items.items()}


def _step(policy: Policy, start: dict, make, micro_batch: int | None, run) -> tuple:
    """One optimizer step of a fresh learner `make(micro_batch)` from the weights `start`: (its metrics and
    whatever else `run` returns, the weights after it, the gradient it stepped with)."""
    policy.load_state_dict(start)
    learner = make(micro_batch)
    result = run(learner)
    return result, policy.state_dict(), torch.cat([p.grad.flatten() for p in policy.parameters()])


def _step_on_items(policy: Policy, make, micro_batch: int, run) -> dict:
    """The metrics of one step on the whole batch, checked equal to the step over micro-batches."""
    start = policy.state_dict()
    whole, pieces = (_step(policy, start, make, size, run) for size in (None, micro_batch))
    return _assert_same_step(start, whole, pieces)


def _assert_same_step(start: dict, whole: tuple, pieces: tuple) -> dict:
    (result, weights, grad), (piece_result, piece_weights, piece_grad) = whole, pieces
    change = max((weights[k] - start[k]).abs().max().item() for k in start)
    assert change > 1e-4  # the step moved the weights, so the comparisons below can fail
    for k in start:
        assert (piece_weights[k] - weights[k]).abs().max().item() <= 1e-6 * change
    assert grad.abs().max() > 0
    torch.testing.assert_close(piece_grad, grad, rtol=1e-9, atol=1e-12 * grad.abs().max().item())
    metrics, piece_metrics = (r[0] if isinstance(r, tuple) else r for r in (result, piece_result))
    assert piece_metrics.keys() == metrics.keys()
    for name, value in metrics.items():
        assert piece_metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    return metrics


@pytest.mark.parametrize("micro_batch", [4, 5])  # 12 items: 3 pieces of 4; or 5, 5 and 2
def test_a_d3po_step_over_micro_batches_is_the_step_on_the_whole_batch(tiny_pipe, micro_batch):
    out, denoiser, policy, cond, uncond = _sampled_float64(tiny_pipe, group_size=2)
    index_w, index_l = torch.tensor([0, 3, 4, 7]), torch.tensor([1, 2, 5, 6])
    items = _float64(pair_items(out["latents"], out["group"], out["timesteps"], index_w, index_l))
    assert len(items["prompt"]) == 12  # 4 pairs x 3 steps

    def make(size):
        common = dict(lr=1e-2, beta=2.0, clip=0.05, guidance_scale=5.0, eta=1.0)
        return D3POLearner(policy, denoiser, **common, micro_batch=size)

    metrics = _step_on_items(policy, make, micro_batch, lambda learner: learner.step(items, cond, uncond))
    # Batch-wide fractions that an average of the pieces' would get wrong with unequal pieces.
    assert 0 < metrics["clamped_fraction"] < 1 and 0 < metrics["preference_accuracy"] < 1


@pytest.mark.parametrize("micro_batch", [3, 5])
def test_a_ddpo_step_over_micro_batches_is_the_step_on_the_whole_batch(tiny_pipe, micro_batch):
    out, denoiser, policy, cond, uncond = _sampled_float64(tiny_pipe, group_size=1)
    advantages = torch.tensor([2.0, -0.5, 0.7, -3.0])  # two beyond adv_clip_max
    items = _float64(ddpo_items(out, advantages, 3, torch.Generator().manual_seed(0)))
    assert len(items["prompt"]) == 12  # 4 samples x 3 steps

    def make(size):
        common = dict(lr=1e-2, clip_range=0.05, adv_clip_max=1.0, guidance_scale=5.0, eta=1.0)
        return DDPOLearner(policy, denoiser, **common, micro_batch=size)

    metrics = _step_on_items(policy, make, micro_batch, lambda learner: learner.step(items, cond, uncond))
    assert 0 < metrics["clip_fraction"] < 1


def _nan_for_the_dog(images, prompts):
    """Smoothness, NaN for the second prompt's sample (a reward that failed on one image)."""
    failed = torch.tensor([prompt == PROMPTS[1] for prompt in prompts])
    return torch.where(failed, torch.nan, smoothness(images, prompts))


DRAFT_CASES = {  # name: (learner settings, micro_batch)
    "draft-k": (dict(k=2), 2),
    "draft-k eta": (dict(k=2, eta=1.0), 1),  # the step noise drawn for the batch, cut with it
    "full descending": (dict(k=3, descend=True), 3),  # pieces of 3 and 1
    "draft-lv": (dict(k=1, lv_copies=3), 2),
    "alignprop": (dict(k=3, truncation="random", eta=0.5), 2),
    "refl": (dict(k=3, truncation="one", eta=0.5), 2),
    "a nan reward": (dict(k=2, reward_fn=_nan_for_the_dog), 1),  # one piece has no finite reward
}


def _draft_setup(tiny_pipe) -> tuple:
    """The tiny model's denoiser in float64, a LoRA policy moved away from the reference, the prompts'
    conditioning, and latents (4, 4, 8, 8) to start from."""
    denoiser, policy, cond, uncond, g = _float64_policy(tiny_pipe, seed=0, scale=0.1)
    latents = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    return denoiser, policy, cond, uncond, latents


@pytest.mark.parametrize("case", DRAFT_CASES)
def test_a_draft_step_over_micro_batches_is_the_step_on_the_whole_batch(tiny_pipe, case):
    settings, micro_batch = DRAFT_CASES[case]
    settings = dict(settings)  # the table stays as it is for the next case
    denoiser, policy, cond, uncond, latents = _draft_setup(tiny_pipe)
    reward_fn = settings.pop("reward_fn", smoothness)

    def make(size):
        common = dict(lr=1e-2, num_steps=3, guidance_scale=3.0, micro_batch=size)
        return DRaFTLearner(denoiser, policy, reward_fn, **common, **settings)

    def run(learner):
        return learner.step(latents, cond, uncond, torch.Generator().manual_seed(2), PROMPTS)

    start = policy.state_dict()
    whole, pieces = (_step(policy, start, make, size, run) for size in (None, micro_batch))
    metrics = _assert_same_step(start, whole, pieces)
    rewards, piece_rewards = whole[0][1], pieces[0][1]
    if settings.get("lv_copies"):
        assert rewards is None and piece_rewards is None  # the sampler scored DRaFT-LV's samples
    else:
        torch.testing.assert_close(piece_rewards, rewards, rtol=1e-9, atol=0, equal_nan=True)
    assert metrics["train_reward"] == pytest.approx(-metrics["loss"] * (-1 if "descend" in settings else 1))


def test_a_nan_reward_drops_out_of_the_mean_when_its_micro_batch_has_no_other(tiny_pipe):
    """The loss is minus the mean of the batch's finite rewards (3 of 4 here): each piece of one sample adds
    its gradient weighted by its share of them, the NaN one nothing."""
    denoiser, policy, cond, uncond, latents = _draft_setup(tiny_pipe)
    timesteps = denoiser.set_timesteps(3, denoiser.resolution_of(latents))
    args = (denoiser, denoiser.model, _nan_for_the_dog, latents, timesteps[1:], cond, uncond)
    loss, rewards = draft_k_loss(*args, guidance_scale=3.0, prompts=PROMPTS)
    loss.backward()
    direct = torch.cat([p.grad.flatten() for p in policy.parameters()])
    assert rewards.isnan().tolist() == [False, True, False, False]
    learner = DRaFTLearner(
        denoiser, policy, _nan_for_the_dog, lr=1e-2, num_steps=3, k=2, guidance_scale=3.0, micro_batch=1
    )
    metrics, _ = learner.step(latents, cond, uncond, torch.Generator().manual_seed(2), PROMPTS)
    stepped = torch.cat([p.grad.flatten() for p in policy.parameters()])
    torch.testing.assert_close(stepped, direct, rtol=1e-9, atol=1e-12 * direct.abs().max().item())
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-12)


@pytest.mark.parametrize(
    "config, kwargs, message",
    [
        (D3POConfig, {"micro_batch": 0}, "micro_batch=0 is not allowed: None or a divisor of batch_size / "),
        (D3POConfig, {"batch_size": 16, "train_workers": 2, "micro_batch": 16}, r"\(8\): 1, 2, 4, 8$"),
        (DDPOConfig, {"batch_size": 32, "micro_batch": 5}, r"micro_batch=5 .*\(32\): 1, 2, 4, 8, 16, 32$"),
        (DRaFTConfig, {"batch_size": 8, "micro_batch": 3}, r"micro_batch=3 is not allowed: .*\(8\)"),
        (DRaFTConfig, {"micro_batch": -2}, "micro_batch=-2 is not allowed"),
    ],
)
def test_a_micro_batch_that_does_not_divide_a_workers_share_is_refused_naming_the_field(
    config, kwargs, message
):
    with pytest.raises(ValueError, match=message):
        config(**kwargs)


def test_a_micro_batch_dividing_a_workers_share_is_accepted_and_is_no_defining_setting():
    cfg = DRaFTConfig(batch_size=8, train_workers=2, micro_batch=2)
    assert cfg.micro_batch == 2 and "micro_batch" not in cfg.defining_settings()
    assert D3POConfig(micro_batch=16).defining_settings() == D3POConfig().defining_settings()
    assert DDPOConfig(micro_batch=8).micro_batch == 8


def test_the_labels_config_checks_micro_batch_too(monkeypatch):
    manifest = {"model": "tiny", "seed": 0, "settings": dict(num_steps=3, guidance_scale=5.0, eta=1.0)}
    monkeypatch.setattr(labels_config, "read_manifest", lambda folder: (manifest, "sha"))
    assert labels_config.D3POLabelsConfig(batch="b", micro_batch=4).micro_batch == 4
    with pytest.raises(ValueError, match=r"micro_batch=3 is not allowed: .*\(16\): 1, 2, 4, 8, 16$"):
        labels_config.D3POLabelsConfig(batch="b", micro_batch=3)
