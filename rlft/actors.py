"""Ray actors: samplers (the pipeline and the current LoRA) and scorers (a reward), each built once per run.

A sampler returns a chunk's samples and, as a second object, its images, so that a scorer fetches only the
images and the driver only the latents. Weights arrive as one object-store reference per update.
"""

import os

import ray
import torch
from torch import Tensor

from rlft.config import CommonConfig
from rlft.epoch import Chunk, sample_chunk
from rlft.loop import build_policy, pick_device
from rlft.rewards import get_reward


def use_threads(cfg: CommonConfig) -> None:
    """Ray starts a 1-CPU actor with one torch thread; on a CPU, sampling and training want every core."""
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)


class Sampler:
    def __init__(self, cfg: CommonConfig, settings: dict):
        use_threads(cfg)
        self.pipe, self.policy = build_policy(cfg, pick_device(cfg.device))
        for module in (self.pipe.unet, self.pipe.vae, self.pipe.text_encoder):
            module.requires_grad_(False)
        self.settings = settings

    def load_weights(self, weights: dict[str, Tensor]) -> None:
        self.policy.load_state_dict({k: v.to(self.pipe.device) for k, v in weights.items()})

    def sample(self, chunk: Chunk, **overrides) -> tuple[dict[str, Tensor], Tensor | None]:
        """(the chunk's samples without images, its images or None when the last steps were left undone)."""
        samples = sample_chunk(self.pipe, chunk, self.settings | overrides)
        return samples, samples.pop("images", None)


class Scorer:
    def __init__(self, reward: str):
        self.reward_fn = get_reward(reward).fn

    def score(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.reward_fn(images).float().cpu()


def start_actors(cfg: CommonConfig, settings: dict, reward: str) -> tuple[list, list]:
    """cfg.samplers samplers and cfg.scorers scorers with the resources the config asks for."""
    sampler = ray.remote(Sampler).options(num_cpus=cfg.actor_cpus, num_gpus=cfg.sampler_gpus)
    scorer = ray.remote(Scorer).options(num_cpus=cfg.actor_cpus, num_gpus=cfg.scorer_gpus)
    samplers = [sampler.remote(cfg, settings) for _ in range(cfg.samplers)]
    scorers = [scorer.remote(reward) for _ in range(cfg.scorers)]
    return samplers, scorers
