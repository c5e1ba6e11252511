import math

import torch

from rlft.algorithms.d3po import D3POLearner
from rlft.algorithms.pairs import noised_pair_items, pair_items, pairs_from_rewards
from rlft.diffusion.policy import Policy
from rlft.diffusion.sampling import sample_trajectories
from rlft.families.registry import denoiser_for
from rlft.world.tiny_model import build_tiny_pipeline


def test_pairs_follow_the_reward_order_within_groups_and_count_ties():
    rewards = torch.tensor([1.0, 2.0, 5.0, 5.0, 3.0, 1.0, 2.0])
    group = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    index_w, index_l, ties = pairs_from_rewards(rewards, group)
    # group 0: 1 beats 0; group 1: a tie; group 2 (three members): 4>5, 4>6, 6>5.
    assert list(zip(index_w.tolist(), index_l.tolist(), strict=True)) == [(1, 0), (4, 5), (4, 6), (6, 5)]
    assert ties == 1


def test_a_sample_with_a_nan_reward_takes_part_in_no_pair():
    rewards = torch.tensor([1.0, float("nan"), 5.0, 3.0, float("nan")])
    group = torch.tensor([0, 0, 1, 1, 1])
    index_w, index_l, ties = pairs_from_rewards(rewards, group)
    assert list(zip(index_w.tolist(), index_l.tolist(), strict=True)) == [(2, 3)] and ties == 0


def test_pair_items_are_the_recorded_steps_of_winner_and_loser():
    latents = torch.arange(4 * 4, dtype=torch.float32).reshape(4, 4, 1, 1, 1)  # 4 samples, 3 steps
    group = torch.tensor([7, 7, 9, 9])  # the samples' prompt indices
    timesteps = torch.tensor([900, 500, 100])
    items = pair_items(latents, group, timesteps, torch.tensor([3, 0]), torch.tensor([2, 1]))
    assert items["timesteps"].tolist() == [900, 500, 100, 900, 500, 100]
    # item 4 is pair 1 (w = sample 0, l = sample 1) at step 1: x_t = latents[s, 1], x_{t-1} = latents[s, 2]
    assert items["latents_w"][4].item() == latents[0, 1].item()
    assert items["next_latents_w"][4].item() == latents[0, 2].item()
    assert items["latents_l"][4].item() == latents[1, 1].item()
    assert items["prompt"].tolist() == [9, 9, 9, 7, 7, 7]


def _cat_groups(pipe, prompts: int, num_steps: int) -> dict:
    """Groups of 2 samples sharing x_T, one group per "a photo of a cat" prompt, every step recorded."""
    generator = torch.Generator().manual_seed(0)
    return sample_trajectories(
        pipe, ["a photo of a cat"] * prompts, group_size=2, num_steps=num_steps, generator=generator
    )


def test_learner_moves_the_policy_towards_the_preferred_steps(tiny_pipe):
    policy = Policy(tiny_pipe.unet)
    out = _cat_groups(tiny_pipe, 4, 5)
    # Arbitrary preferences: the first member of each group wins.
    items = pair_items(
        out["latents"], out["group"], out["timesteps"], torch.tensor([0, 2, 4, 6]), torch.tensor([1, 3, 5, 7])
    )
    denoiser = denoiser_for(tiny_pipe)
    cond, uncond = denoiser.encode(["a photo of a cat"] * 4)  # one row per prompt
    learner = D3POLearner(policy, denoiser, lr=1e-2, beta=1.0, clip=0.5, guidance_scale=5.0, eta=1.0)
    first = learner.step(items, cond, uncond, measure_after=True)
    assert abs(first["loss"] - math.log(2)) < 1e-6  # policy == reference at the start
    # The step moved its own items the way they ask: measured on them again after it.
    assert first["reward_margin"] == 0.0 and first["margin_after"] > 0
    assert first["accuracy_after"] > first["preference_accuracy"]
    for _ in range(15):
        last = learner.step(items, cond, uncond)
    assert last["loss"] < math.log(2) - 0.01
    assert last["preference_accuracy"] >= 0.85  # of the 20 (pair, step) items


def test_noised_items_give_both_members_one_timestep_and_one_noise():
    latents = torch.randn(4, 6, 2, 3, 3)  # 4 samples, 5 steps
    timesteps = torch.tensor([900, 700, 500])  # the steps trained
    args = (latents, torch.tensor([0, 0, 1, 1]), timesteps, torch.tensor([1, 2]), torch.tensor([0, 3]), 3)
    items = noised_pair_items(*args, torch.Generator().manual_seed(0))
    assert items["noise"].shape == (6, 2, 3, 3) and items["prompt"].tolist() == [0, 0, 0, 1, 1, 1]
    assert set(items["timesteps"].tolist()) <= {900, 700, 500}
    torch.testing.assert_close(items["latents_w"][:3], latents[1, -1].expand(3, 2, 3, 3))  # final latents
    torch.testing.assert_close(items["latents_l"][3:], latents[3, -1].expand(3, 2, 3, 3))
    again = noised_pair_items(*args, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, items)  # drawn from the generator only


def test_the_noised_objective_compares_noise_prediction_errors_and_learns_its_pairs(tiny_pipe):
    policy = Policy(tiny_pipe.unet)
    denoiser = denoiser_for(tiny_pipe)
    denoiser.set_timesteps(5)
    out = _cat_groups(tiny_pipe, 2, 5)
    items = noised_pair_items(
        out["latents"],
        out["group"],
        out["timesteps"],
        torch.tensor([0, 2]),
        torch.tensor([1, 3]),
        4,
        torch.Generator().manual_seed(1),
    )
    cond, uncond = denoiser.encode(["a photo of a cat"] * 2)
    learner = D3POLearner(policy, denoiser, lr=1e-2, beta=2500.0, clip=None, guidance_scale=5.0, eta=1.0)
    # By hand for an epsilon model: the error is the mean squared miss of the guided noise prediction.
    t, noise, x0 = items["timesteps"][:1], items["noise"][:1], items["latents_w"][:1]
    noisy = tiny_pipe.scheduler.add_noise(x0, noise, t)
    with torch.no_grad():
        predicted = denoiser.guided(policy.model, noisy, t, cond.take(items["prompt"][:1]), uncond, 5.0)
        error = learner._denoising_error(policy.model, x0, noise, t, cond.take(items["prompt"][:1]), uncond)
    torch.testing.assert_close(error, ((predicted - noise) ** 2).mean(dim=(1, 2, 3)), rtol=1e-4, atol=1e-6)
    first = learner.step(items, cond, uncond)
    assert abs(first["loss"] - math.log(2)) < 1e-6  # policy == reference at the start
    for _ in range(5):
        last = learner.step(items, cond, uncond)
    assert last["preference_accuracy"] == 1.0 and last["loss"] < 0.1  # of the 8 (pair, draw) items


def test_an_epoch_measures_its_first_step_after_it_unless_asked_for_every_step(tiny_pipe):
    out = _cat_groups(tiny_pipe, 2, 3)
    items = pair_items(
        out["latents"], out["group"], out["timesteps"], torch.tensor([0, 2]), torch.tensor([1, 3])
    )
    batches = [{k: v[:3] for k, v in items.items()}, {k: v[3:] for k, v in items.items()}]  # 6 items, 2 steps
    epochs = {}
    for every in (False, True):
        pipe = tiny_pipe if not every else build_tiny_pipeline(seed=0)  # a fresh policy at the reference
        pipe.unet.requires_grad_(False)
        denoiser = denoiser_for(pipe)
        denoiser.set_timesteps(3)  # the steps the items were sampled at
        cond, uncond = denoiser.encode(["a photo of a cat"] * 2)
        learner = D3POLearner(
            Policy(pipe.unet),
            denoiser,
            lr=1e-2,
            beta=1.0,
            clip=0.5,
            guidance_scale=5.0,
            eta=1.0,
            after_every_step=every,
        )
        epochs[every] = learner.train_epoch(batches, cond, uncond)
    first_only, every_step = epochs[False], epochs[True]
    assert first_only["margin_before"] == 0.0  # the first step starts at the reference
    assert first_only["margin_after"] > 0  # and moved its 3 items the way they ask
    # Every step: before and after each of the two steps, averaged; before, as the epoch's own margin.
    assert every_step["margin_before"] == every_step["reward_margin"]
    assert first_only["margin_before"] != first_only["reward_margin"]  # the second step's counts there
    assert every_step["margin_after"] > every_step["margin_before"]  # each step moved its own items
