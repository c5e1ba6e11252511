import math

import torch

from rlft.algorithms.d3po import D3POLearner, pair_items, pairs_from_rewards
from rlft.diffusion.families import denoiser_for
from rlft.diffusion.policy import Policy
from rlft.diffusion.sampling import sample_trajectories


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


def test_learner_moves_the_policy_towards_the_preferred_steps(tiny_pipe):
    policy = Policy(tiny_pipe.unet)
    out = sample_trajectories(
        tiny_pipe,
        ["a photo of a cat"] * 4,
        group_size=2,
        num_steps=5,
        generator=torch.Generator().manual_seed(0),
    )
    # Arbitrary preferences: the first member of each group wins.
    items = pair_items(
        out["latents"], out["group"], out["timesteps"], torch.tensor([0, 2, 4, 6]), torch.tensor([1, 3, 5, 7])
    )
    denoiser = denoiser_for(tiny_pipe)
    cond, uncond = denoiser.encode(["a photo of a cat"] * 4)  # one row per prompt
    learner = D3POLearner(policy, denoiser, lr=1e-2, beta=1.0, clip=0.5, guidance_scale=5.0, eta=1.0)
    first = learner.step(items, cond, uncond)
    assert abs(first["loss"] - math.log(2)) < 1e-6  # policy == reference at the start
    # The step moved its own items the way they ask: measured on them again after it.
    assert first["reward_margin"] == 0.0 and first["margin_after"] > 0
    assert first["accuracy_after"] > first["preference_accuracy"]
    for _ in range(15):
        last = learner.step(items, cond, uncond)
    assert last["loss"] < math.log(2) - 0.01
    assert last["preference_accuracy"] >= 0.85  # of the 20 (pair, step) items
