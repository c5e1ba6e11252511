"""Rewards to advantages for policy-gradient training (DDPO), as pure functions of rewards and prompts.

`PerPromptStats` is DDPO's per-prompt normaliser (Black et al., arXiv 2305.13301, section 4.3; ddpo-pytorch's
`PerPromptStatTracker`): each prompt keeps its last `buffer_size` rewards across epochs, and a sample's
advantage is its reward standardised by its prompt's buffer once that holds `min_count` rewards, by the
whole batch before. `group_advantages` standardises within the samples of one prompt in the same batch
(the group-relative advantages of GRPO, as Flow-GRPO, arXiv 2505.05470, uses them).
"""

from collections import deque

import torch
from torch import Tensor

EPS = 1e-6  # added to a standard deviation, as ddpo-pytorch does: equal rewards give zero advantages


def standardise(values: Tensor, mean: Tensor | float, std: Tensor | float) -> Tensor:
    return (values - mean) / (std + EPS)


class PerPromptStats:
    """DDPO's per-prompt reward statistics, kept across epochs (its state goes into every checkpoint)."""

    def __init__(self, buffer_size: int, min_count: int):
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, deque[float]] = {}

    def advantages(self, prompts: list[str], rewards: Tensor) -> Tensor:
        """Add the batch's rewards (B,) to their prompts' buffers, then standardise each against its prompt's
        buffer (population std, as numpy's default) or, while that holds fewer than min_count, the batch's."""
        rewards = rewards.double()
        out = torch.empty_like(rewards)
        for prompt, mine in by_prompt(prompts):
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(rewards[mine].tolist())
            basis = (
                torch.tensor(list(buffer), dtype=torch.float64) if len(buffer) >= self.min_count else rewards
            )
            out[mine] = standardise(rewards[mine], basis.mean(), basis.std(unbiased=False))
        return out.float()

    def state_dict(self) -> dict:
        return {"buffers": {prompt: list(buffer) for prompt, buffer in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {
            prompt: deque(values, maxlen=self.buffer_size) for prompt, values in state["buffers"].items()
        }


def group_advantages(prompts: list[str], rewards: Tensor) -> Tensor:
    """Each reward (B,) standardised by the mean and (population) std of the batch's rewards for its
    prompt."""
    rewards = rewards.double()
    out = torch.empty_like(rewards)
    for _, mine in by_prompt(prompts):
        group = rewards[mine]
        out[mine] = standardise(group, group.mean(), group.std(unbiased=False))
    return out.float()


def by_prompt(prompts: list[str]) -> list[tuple[str, Tensor]]:
    """Each distinct prompt, in order of first appearance, with the mask (B,) of the samples that have it."""
    return [(prompt, torch.tensor([p == prompt for p in prompts])) for prompt in dict.fromkeys(prompts)]
