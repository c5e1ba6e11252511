"""Ray actors, each built once per run: samplers (the pipeline and the current LoRA) and scorers (a reward;
the class lives in rlft/distributed/scorer.py).

A sampler returns a chunk's samples and, as a second object, its images, so that a scorer fetches only the
images and the driver only the latents. With `scorers=0` each sampler holds the reward too and returns the
chunk's rewards as a third object: one process fewer, and on a GPU the reward shares the sampler's.
Weights arrive as `Weights`: a version number and one object-store reference the driver owns, so they
outlive the train worker that made them.

Faults: an actor that dies (its process killed, its node lost) is restarted up to `max_failures` times and
its unfinished calls are retried there. A restarted sampler starts from the base weights, so every `sample`
call carries the weights it must use: a sampler loads them when their version is not the one it holds. A
chunk's noise comes from its own seed, so a retried chunk gives the same samples: none lost, none doubled.

The model code (diffusers, peft) is imported inside the sampler, not by this module: the driver imports this
module to start the actors before it imports the training code itself, so the actors' start-up and the
driver's import overlap.
"""

import os
from dataclasses import dataclass

import ray
import torch
from torch import Tensor

from rlft.configs import RunConfig, SamplingConfig
from rlft.distributed.scorer import Scorer
from rlft.epoch import Chunk, sample_chunk


def use_threads(cfg: RunConfig) -> None:
    """Ray starts a 1-CPU actor with one torch thread; on a CPU, sampling and training want every core."""
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)


@dataclass(frozen=True)
class Weights:
    """The trained weights' version and [a reference to {name: tensor}] (in a list, so Ray hands the
    reference over instead of fetching it for every call)."""

    version: int
    ref: list


class Sampler:
    def __init__(self, cfg: SamplingConfig, settings: dict, reward: str | None = None):
        """`reward`: the reward this sampler scores its own images with (`scorers=0`); None: it does not."""
        from rlft.diffusion.policy import build_policy, pick_device

        use_threads(cfg)
        self.pipe, self.policy = build_policy(cfg, pick_device(cfg.device))
        for module in self.pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
        self.settings = settings
        self.version: int | None = None  # None: the base weights, as built
        self.scorer = None if reward is None else Scorer(reward)

    def load_weights(self, weights: Weights) -> None:
        if weights.version != self.version:
            state = ray.get(weights.ref[0])
            self.policy.load_state_dict({k: v.to(self.pipe.device) for k, v in state.items()})
            self.version = weights.version

    def sample(self, chunk: Chunk, weights: Weights, **overrides) -> tuple[dict[str, Tensor], Tensor | None]:
        """(the chunk's samples without images, its images or None when the last steps were left undone)."""
        self.load_weights(weights)
        samples = sample_chunk(self.pipe, chunk, self.settings | overrides)
        return samples, samples.pop("images", None)

    def sample_and_score(
        self, chunk: Chunk, weights: Weights, prompts: list[str], **overrides
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """(the chunk's samples without images, its images, their rewards); `prompts`: each image's prompt."""
        samples, images = self.sample(chunk, weights, **overrides)
        return samples, images, self.scorer.score(images, prompts)


def start_actors(cfg: SamplingConfig, settings: dict, reward: str) -> tuple[list, list]:
    """cfg.samplers samplers and cfg.scorers scorers with the resources the config asks for; with no
    scorers, each sampler scores its own images."""
    retries = dict(max_restarts=cfg.max_failures, max_task_retries=cfg.max_failures)
    sampler = ray.remote(Sampler).options(
        num_cpus=cfg.actor_cpus,
        num_gpus=cfg.sampler_gpus,
        resources=custom_resource(cfg.sampler_resource),
        **retries,
    )
    scorer = ray.remote(Scorer).options(num_cpus=cfg.actor_cpus, num_gpus=cfg.scorer_gpus, **retries)
    own_reward = reward if cfg.scorers == 0 else None
    samplers = [sampler.remote(cfg, settings, own_reward) for _ in range(cfg.samplers)]
    scorers = [scorer.remote(reward) for _ in range(cfg.scorers)]
    return samplers, scorers


def custom_resource(resource: str | None) -> dict[str, float]:
    return {resource: 1.0} if resource else {}
