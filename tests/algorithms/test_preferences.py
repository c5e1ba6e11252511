"""Preferences from several rewards (D3PO's Pareto rule) and the metrics logged for them."""

import math

import pytest
import torch

from rlft.algorithms.pairs import d3po_items, pairs_from_rewards
from rlft.epoch import Chunk, chunk_prompts, prompts_of, reward_metrics

NAN = float("nan")


def _pairs(rewards, group):
    index_w, index_l, ties = pairs_from_rewards(torch.tensor(rewards), torch.tensor(group))
    return list(zip(index_w.tolist(), index_l.tolist(), strict=True)), ties


def test_a_sample_is_preferred_only_when_it_is_as_good_on_every_reward_and_better_on_one():
    # The official D3PO code's example: A (30, 10, 6.0) beats B (20, 8, 5.0) on all three rewards;
    # C (40, 4, 4.0) is better than A on the first and worse on the others, so neither is preferred.
    a, b, c = [30.0, 10.0, 6.0], [20.0, 8.0, 5.0], [40.0, 4.0, 4.0]
    assert _pairs([a, b], [0, 0]) == ([(0, 1)], 0)
    assert _pairs([c, a], [0, 0]) == ([], 1)
    # Equal on one reward, better on the other: preferred. Equal on both: a tie.
    assert _pairs([[1.0, 2.0], [1.0, 3.0]], [0, 0]) == ([(1, 0)], 0)
    assert _pairs([[1.0, 2.0], [1.0, 2.0]], [0, 0]) == ([], 1)


def test_groups_of_three_with_two_rewards():
    rewards = [[1.0, 1.0], [2.0, 2.0], [3.0, 0.0], [5.0, 5.0], [4.0, 4.0]]
    group = [0, 0, 0, 1, 1]
    # group 0: 1 dominates 0 (2>1, 2>1); 2 vs 0: 3>1 but 0<1, a tie; 2 vs 1: 3>2 but 0<2, a tie.
    # group 1: 3 dominates 4.
    assert _pairs(rewards, group) == ([(1, 0), (3, 4)], 2)


def test_a_nan_on_any_reward_takes_the_sample_out_of_every_pair():
    rewards = [[1.0, 1.0], [2.0, NAN], [0.0, 0.0], [NAN, 3.0], [1.0, 0.5]]
    group = [0, 0, 0, 1, 1]
    # group 0: sample 1 is out; 0 dominates 2. group 1: sample 3 is out, 4 has no partner left.
    assert _pairs(rewards, group) == ([(0, 2)], 0)


def test_one_reward_as_a_column_gives_the_same_pairs_as_a_vector():
    rewards = torch.tensor([1.0, 2.0, 5.0, 5.0, 3.0, 1.0, 2.0])
    group = [0, 0, 1, 1, 2, 2, 2]
    assert _pairs(rewards.tolist(), group) == _pairs(rewards[:, None].tolist(), group)
    assert _pairs(rewards.tolist(), group) == ([(1, 0), (4, 5), (4, 6), (6, 5)], 1)


def test_d3po_items_train_only_on_dominating_pairs():
    latents = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 3, 1, 1, 1)  # 4 samples, 2 steps
    samples = {"latents": latents, "group": torch.tensor([0, 0, 1, 1]), "timesteps": torch.tensor([500, 100])}
    rewards = torch.tensor([[1.0, 1.0], [2.0, 2.0], [1.0, 2.0], [2.0, 1.0]])  # group 1 is a tie
    items, pairing = d3po_items(samples, rewards)
    # 2.0 - 1.0 on the first reward; the spread of [1, 2, 1, 2] is 0.577, and 1.0 is no near-tie
    assert pairing == {"pairs": 1.0, "ties": 1.0, "reward_gap": 1.0, "near_tie_share": 0.0}
    assert items["latents_w"].flatten().tolist() == [3.0, 4.0]  # sample 1 at steps 0 and 1
    assert items["latents_l"].flatten().tolist() == [0.0, 1.0]

    # --reverse-preferences: the same pair, the other way round; the tie stays a tie.
    items, pairing = d3po_items(samples, rewards, reverse=True)
    assert pairing["reward_gap"] == 1.0  # the margin the preferred one won by
    assert items["latents_w"].flatten().tolist() == [0.0, 1.0]
    assert items["latents_l"].flatten().tolist() == [3.0, 4.0]


def test_the_reward_gap_is_the_mean_margin_of_the_trained_pairs():
    latents = torch.zeros(4, 2, 1, 1, 1)
    samples = {"latents": latents, "group": torch.tensor([0, 0, 1, 1]), "timesteps": torch.tensor([500])}
    rewards = torch.tensor([0.1, 0.5, 0.2, 0.9])
    # best over worst: 1 over 0 by 0.4, 3 over 2 by 0.7; reversed, 0 over 1 and 2 over 3 by the same margins
    for reverse in (False, True):
        _, pairing = d3po_items(samples, rewards, reverse=reverse, pairs="best-worst")
        assert pairing["reward_gap"] == pytest.approx((0.4 + 0.7) / 2)
    _, pairing = d3po_items(samples, torch.tensor([0.3, 0.3, 0.2, 0.2]))  # every pair tied
    assert pairing == {"pairs": 0.0, "ties": 2.0, "reward_gap": 0.0, "near_tie_share": 0.0}


def test_a_pair_won_by_less_than_a_quarter_of_the_spread_is_a_near_tie():
    samples = {"latents": torch.zeros(4, 2, 1, 1, 1), "group": torch.tensor([0, 0, 1, 1])}
    samples["timesteps"] = torch.tensor([500])
    rewards = torch.tensor([0.0, 0.1, 1.0, 2.0])  # standard deviation 0.929: a quarter is 0.232
    _, pairing = d3po_items(samples, rewards)
    assert pairing["near_tie_share"] == 0.5  # 0.1 is a near-tie, 1.0 is not
    assert pairing["reward_gap"] == pytest.approx((0.1 + 1.0) / 2)


def test_metrics_of_several_rewards_are_the_first_rewards_plus_one_mean_each():
    rewards = torch.tensor([[1.0, 10.0], [3.0, 20.0], [NAN, 30.0], [5.0, 60.0]])
    m = reward_metrics(rewards, elapsed=2.0, names=["brightness", "aesthetic"])
    # The sample with a NaN is out of every metric: first reward over 1, 3, 5; second over 10, 20, 60.
    assert m["reward_mean"] == 3.0 and m["reward_std"] == 2.0 and math.isclose(m["reward_se"], 2 / 3**0.5)
    assert m["reward_brightness_mean"] == 3.0 and m["reward_aesthetic_mean"] == 30.0
    assert m["nan_rewards"] == 1.0 and m["samples_per_s"] == 2.0
    assert reward_metrics(rewards, 1.0)["reward_1_mean"] == 30.0  # unnamed: numbered


def test_metrics_of_one_reward_are_unchanged():
    m = reward_metrics(torch.tensor([1.0, 3.0, NAN]), elapsed=1.0)
    assert m["reward_mean"] == 2.0 and m["nan_rewards"] == 1.0
    assert not any(k.endswith("_mean") and k != "reward_mean" for k in m)


def test_each_sample_gets_its_groups_prompt():
    assert prompts_of(["a cat", "a dog"], torch.tensor([0, 0, 1, 1])) == ["a cat", "a cat", "a dog", "a dog"]
    chunk = Chunk(start=4, prompts=["a cat", "a dog"], seed=0)
    assert chunk_prompts(chunk, group_size=2) == ["a cat", "a cat", "a dog", "a dog"]


def test_best_worst_keeps_one_pair_per_group_its_widest_margin():
    rewards = torch.tensor([0.2, 0.9, 0.1, 0.5, 3.0, 3.0, NAN, 1.0, 2.0])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3])
    index_w, index_l, ties = pairs_from_rewards(rewards, group, best_worst=True)
    # group 0: 0.9 (1) over 0.1 (2); group 1 ties; group 2 keeps one finite sample; group 3 has one.
    assert list(zip(index_w.tolist(), index_l.tolist(), strict=True)) == [(1, 2)] and ties == 1


def test_best_worst_refuses_several_rewards():
    with pytest.raises(ValueError, match="one reward"):
        pairs_from_rewards(torch.ones(4, 2), torch.zeros(4, dtype=torch.long), best_worst=True)


def test_the_final_steps_skipped_are_not_trained():
    latents = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1, 1, 1)  # 2 samples, 3 steps
    samples = {"latents": latents, "group": torch.tensor([0, 0]), "timesteps": torch.tensor([700, 400, 100])}
    items, _ = d3po_items(samples, torch.tensor([1.0, 0.0]), skip_final_steps=1)
    assert items["timesteps"].tolist() == [700, 400]  # the last step, 100, is left out
    assert items["latents_w"].flatten().tolist() == [0.0, 1.0]
    assert items["next_latents_w"].flatten().tolist() == [1.0, 2.0]
    assert items["next_latents_l"].flatten().tolist() == [5.0, 6.0]
