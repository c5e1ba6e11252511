"""The fixed evaluation set: the same prompts and noise for every run and epoch, paired metrics by hand."""

import math

import pytest
import torch

from rlft.configs import D3POConfig, DRaFTConfig
from rlft.evaluation import (
    before_after_grid,
    eval_chunks,
    eval_metrics,
    eval_prompts,
    eval_settings,
    judged_metrics,
)
from rlft.prompts import PROMPT_SETS
from rlft.world import scenes


def test_the_set_is_the_same_for_every_seed_and_algorithm_and_held_out_from_training():
    a, b = eval_chunks(D3POConfig(seed=0)), eval_chunks(DRaFTConfig(seed=7))
    assert [(c.prompts, c.seed) for c in a] == [(c.prompts, c.seed) for c in b]
    assert len({c.seed for c in a}) == len(a) == 4  # 32 images in chunks of 8, each its own noise
    prompts = eval_prompts(D3POConfig())
    assert len(prompts) == 32 and not set(prompts) & set(PROMPT_SETS["shapes"])
    assert eval_prompts(D3POConfig(eval_images=300))[224] == prompts[0]  # 224 held-out captions, cycled


def test_the_set_samples_as_training_does_one_image_per_prompt():
    settings = eval_settings(D3POConfig(num_steps=7, eta=0.5))
    assert settings["num_steps"] == 7 and settings["eta"] == 0.5 and settings["group_size"] == 1
    assert not settings["with_logprob"] and settings["skip_last"] == 0
    assert eval_settings(DRaFTConfig(variant="draft-k", k=3))["skip_last"] == 0  # DRaFT's are finished too


def test_metrics_are_paired_against_the_base_model_by_hand():
    base = torch.tensor([1.0, 2.0, 3.0, 4.0])
    now = torch.tensor([2.0, 2.5, 4.0, float("nan")])  # the NaN image drops out, at the base too
    m = eval_metrics(now, base)
    # now over 3 images: mean 8.5/3, std sqrt(((2-2.8333)^2 + (2.5-2.8333)^2 + (4-2.8333)^2)/2) = 1.0408
    assert m["eval_reward_mean"] == pytest.approx(8.5 / 3)
    assert m["eval_reward_se"] == pytest.approx(1.040833 / math.sqrt(3), abs=1e-6)
    assert m["eval_reward_base_mean"] == pytest.approx(2.0)
    # differences 1, 0.5, 1: mean 0.8333, std 0.288675, se 0.288675 / sqrt 3 = 0.166667
    assert m["eval_gain_mean"] == pytest.approx(2.5 / 3)
    assert m["eval_gain_se"] == pytest.approx(1 / 6, abs=1e-6)


def test_several_rewards_are_each_reported():
    base = torch.tensor([[1.0, 10.0], [2.0, 20.0]])
    m = eval_metrics(base + torch.tensor([1.0, -5.0]), base, ["brightness", "smoothness"])
    assert m["eval_gain_mean"] == 1.0 and m["eval_smoothness_gain_mean"] == -5.0
    assert m["eval_smoothness_mean"] == 10.0


def test_the_world_judge_reads_colour_and_shape_against_the_captions():
    images, captions = scenes.make_dataset(4, seed=3)
    assert judged_metrics(images, captions) == {"eval_colour_accuracy": 1.0, "eval_shape_accuracy": 1.0}
    shown = [scenes.parse_caption(c) for c in captions]
    other = {"red": "blue", "blue": "red"}
    swapped = [  # the first caption's shape colour changed: one image in four no longer matches
        c.replace(f" {s.colour} {s.shape} ", f" {other.get(s.colour, 'red')} {s.shape} ") if i == 0 else c
        for i, (c, s) in enumerate(zip(captions, shown, strict=True))
    ]
    assert judged_metrics(images, swapped)["eval_colour_accuracy"] == 0.75
    assert judged_metrics(images, ["a photo of a cat"] * 4) == {}  # not the tiny world's captions


def test_before_after_grid_puts_each_base_row_above_its_trained_row():
    before, after = torch.zeros(10, 3, 4, 4), torch.ones(10, 3, 4, 4)
    grid = before_after_grid(before, after, columns=8)
    # 4 rows (before 8, after 8, before 2 + padding, after 2 + padding) of 8 columns, 1-pixel padding
    assert grid.shape == (3, 4 * 5 + 1, 8 * 5 + 1)
    row = lambda r: grid[:, 1 + 5 * r : 5 + 5 * r, 1:5]  # noqa: E731
    assert row(0).max() == 0 and row(1).min() == 1 and row(2).max() == 0 and row(3).min() == 1
