"""DDPO: its items, its job's config, samples that share their noise or not, and a run that resumes with the
per-prompt statistics it had."""

import pytest
import torch

from rlft.algorithms.ddpo import DDPO, DDPOEpoch, ddpo_items
from rlft.configs import DDPOConfig
from rlft.diffusion.policy import build_policy
from rlft.epoch import epoch_prompts
from rlft.local import LocalBackend, train_local
from rlft.runs.checkpoint import load_checkpoint


def _samples(count: int = 2, steps: int = 3) -> dict:
    """latents[b, s] = 10 b + s and log_probs[b, s] = 100 b + s, so every item says where it came from."""
    latents = (10 * torch.arange(count)[:, None] + torch.arange(steps + 1)).float()
    return {
        "latents": latents[:, :, None, None, None],  # (B, S+1, 1, 1, 1)
        "log_probs": (100 * torch.arange(count)[:, None] + torch.arange(steps)).float(),
        "timesteps": 300 * torch.arange(steps, 0, -1),  # 900, 600, 300 for 3 steps
        "group": torch.arange(count),
    }


def test_items_are_every_step_of_every_sample_with_its_advantage():
    items = ddpo_items(_samples(), torch.tensor([0.5, -0.5]), 3, torch.Generator().manual_seed(0))
    assert items["latents"].flatten().tolist() == [0, 1, 2, 10, 11, 12]
    assert items["next_latents"].flatten().tolist() == [1, 2, 3, 11, 12, 13]
    assert items["timesteps"].tolist() == [900, 600, 300, 900, 600, 300]
    assert items["old_log_probs"].tolist() == [0, 1, 2, 100, 101, 102]
    assert (
        items["advantages"].tolist() == [0.5] * 3 + [-0.5] * 3
        and items["prompt"].tolist() == [0] * 3 + [1] * 3
    )


def test_a_timestep_fraction_trains_distinct_random_steps_of_each_sample():
    items = ddpo_items(_samples(4, 10), torch.zeros(4), 4, torch.Generator().manual_seed(0))
    steps = (items["latents"].flatten() % 10).long().view(4, 4)
    assert all(len(set(row.tolist())) == 4 for row in steps)  # distinct within a sample
    assert len({tuple(row.tolist()) for row in steps}) > 1  # drawn per sample
    assert (items["next_latents"] == items["latents"] + 1).all()
    assert ((items["old_log_probs"] % 100) == steps.flatten()).all()  # the log-prob of the step taken


def test_skipped_final_steps_are_never_trained():
    items = ddpo_items(
        _samples(2, 3), torch.zeros(2), 2, torch.Generator().manual_seed(0), skip_final_steps=1
    )
    assert items["timesteps"].tolist() == [900, 600, 900, 600]  # the last step, 300, is left out
    assert DDPOConfig(skip_final_steps=2).steps_trained == 8
    some = ddpo_items(
        _samples(4, 10), torch.zeros(4), 3, torch.Generator().manual_seed(0), skip_final_steps=2
    )
    assert ((some["latents"].flatten() % 10) < 8).all()  # drawn among the first 8 of 10


def test_a_resumed_run_computes_the_advantages_an_uninterrupted_one_would(tmp_path):
    """Two prompts, so each recurs every epoch and, from epoch 1, its own statistics (carried in the
    checkpoint) replace the batch's: a resume that lost them would train on other advantages."""
    prompts = tmp_path / "two.txt"
    prompts.write_text(
        "a small red circle on a plain blue background\na large green square on a noisy red background\n"
    )
    small = dict(
        prompts=str(prompts),
        prompts_per_epoch=2,
        samples_per_prompt=2,
        stat_min_count=3,
        num_steps=3,
        batch_size=4,
        eval_images=4,
        threads=1,
        ray=False,
        track=False,
    )
    straight = train_local(DDPOConfig(epochs=3, **small), tmp_path / "straight", log=print)
    train_local(DDPOConfig(epochs=2, **small), tmp_path / "resumed", log=print)
    resumed = train_local(DDPOConfig(epochs=3, **small), tmp_path / "resumed", log=print)
    assert [h["loss"] for h in straight] == [h["loss"] for h in resumed]
    assert straight[-1]["eval_gain_mean"] == resumed[-1]["eval_gain_mean"]
    _, _, state = load_checkpoint(tmp_path / "resumed" / "checkpoint")
    buffers = state["algorithm"]["stats"]["buffers"]  # every reward of 3 epochs x 2 prompts x 2 samples
    assert (
        sorted(buffers) == sorted(prompts.read_text().splitlines()) and sum(map(len, buffers.values())) == 12
    )

    batch_only = train_local(
        DDPOConfig(epochs=3, **small | dict(stat_min_count=100)), tmp_path / "b", log=print
    )
    assert batch_only[0]["loss"] == straight[0]["loss"] and batch_only[2]["loss"] != straight[2]["loss"]


@pytest.mark.parametrize("shared", [True, False])
def test_samples_of_a_prompt_share_their_initial_noise_only_with_shared_noise(shared):
    cfg = DDPOConfig(
        shared_noise=shared,
        prompts_per_epoch=2,
        samples_per_prompt=3,
        num_steps=3,
        batch_size=6,
        eval_images=2,
        threads=1,
        ray=False,
        track=False,
    )
    pipe, policy = build_policy(cfg)
    backend = LocalBackend(cfg, pipe, DDPO.make_learner(cfg, pipe, policy), DDPO.train)
    seen, sample, train = {}, backend.sample, backend.train

    def recording_sample(epoch, prompts, score=True):
        seen["prompts"], sampled = prompts, sample(epoch, prompts, score)
        seen["samples"] = sampled.samples
        return sampled

    def recording_train(epoch, prompts, items):
        seen["item_prompts"] = [prompts[i] for i in items["prompt"].tolist()]
        return train(epoch, prompts, items)

    backend.sample, backend.train = recording_sample, recording_train
    _, rewards, show = DDPOEpoch(cfg, backend)(0)
    drawn = epoch_prompts(cfg, 0)
    assert seen["prompts"] == (drawn if shared else [p for p in drawn for _ in range(3)])
    x_T = seen["samples"]["latents"][:, 0]  # (6, C, h, w), a prompt's samples adjacent
    same = [torch.equal(x_T[i], x_T[j]) for i, j in [(0, 1), (1, 2), (3, 4), (2, 3)]]
    assert same == ([True, True, True, False] if shared else [False] * 4)
    assert len(rewards) == 6
    assert seen["item_prompts"] == [p for p in drawn for _ in range(3) for _ in range(3)]  # 3 steps each
    images, texts = show()
    assert len(images) == 2 and texts == drawn
