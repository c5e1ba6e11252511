"""Rewards to advantages: DDPO's per-prompt statistics and group-relative advantages, worked by hand."""

import math

import pytest
import torch

from rlft.algorithms.advantages import PerPromptStats, group_advantages


def test_per_prompt_statistics_use_the_batch_until_a_prompt_has_enough_rewards_then_its_own_last_ones():
    stats = PerPromptStats(buffer_size=3, min_count=3)
    first = stats.advantages(["a", "a", "b", "b"], torch.tensor([1.0, 3.0, 10.0, 20.0]))
    # Every prompt has 2 < 3 rewards: the batch's mean 8.5 and population std sqrt(55.25).
    batch_std = math.sqrt(((1 - 8.5) ** 2 + (3 - 8.5) ** 2 + (10 - 8.5) ** 2 + (20 - 8.5) ** 2) / 4)
    expected = [(r - 8.5) / batch_std for r in (1, 3, 10, 20)]
    assert first.tolist() == pytest.approx(expected, rel=1e-5)
    # "a" now holds its last 3 rewards (1 fell out): 3, 5, 7, mean 5, std sqrt(8/3).
    second = stats.advantages(["a", "a"], torch.tensor([5.0, 7.0]))
    assert second.tolist() == pytest.approx([0.0, 2 / math.sqrt(8 / 3)], abs=1e-5)


def test_per_prompt_statistics_survive_a_state_dict_round_trip():
    stats = PerPromptStats(buffer_size=3, min_count=3)
    stats.advantages(["a", "a", "b"], torch.tensor([1.0, 2.0, 3.0]))
    copy = PerPromptStats(buffer_size=3, min_count=3)
    copy.load_state_dict(stats.state_dict())
    rewards = torch.tensor([4.0, 0.0])
    assert copy.advantages(["a", "b"], rewards).tolist() == stats.advantages(["a", "b"], rewards).tolist()


def test_group_advantages_standardise_within_each_prompts_samples():
    advantages = group_advantages(["a", "b", "a", "b"], torch.tensor([1.0, 10.0, 3.0, 20.0]))
    assert advantages.tolist() == pytest.approx([-1.0, -1.0, 1.0, 1.0], abs=1e-5)
    assert group_advantages(["a", "a"], torch.tensor([2.0, 2.0])).tolist() == [0.0, 0.0]  # no preference
