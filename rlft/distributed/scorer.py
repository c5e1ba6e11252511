"""The scorer actor: a reward, loaded once, turning images into rewards.

In a module of its own that imports only torch and the rewards: Ray imports an actor's module in the actor's
process, and the samplers' module brings diffusers and peft (about ten seconds of CPU on a small machine),
which a scorer never uses.
"""

import torch
from torch import Tensor

from rlft.rewards.registry import get_reward


class Scorer:
    def __init__(self, reward: str):
        self.reward_fn = get_reward(reward).fn

    def score(self, images: Tensor, prompts: list[str] | None = None) -> Tensor:
        """Rewards (B,), or (B, R) for several; `prompts`: each image's prompt (B strings)."""
        with torch.no_grad():
            return self.reward_fn(images, prompts).float().cpu()
