"""Prompt sets. Each epoch draws its prompts from a set with a seeded generator."""

import torch

# The simple animal list of DDPO and D3PO (ddpo-pytorch's `simple_animals`, first 24).
ANIMALS = (
    "cat dog horse monkey rabbit zebra spider bird sheep deer cow goat lion frog chicken duck goose bee pig "
    "turkey fly llama camel bat"
).split()

PROMPT_SETS: dict[str, tuple[str, ...]] = {"animals": tuple(f"a photo of a {a}" for a in ANIMALS)}


def draw_prompts(prompt_set: str, count: int, generator: torch.Generator) -> list[str]:
    """`count` prompts drawn uniformly with replacement from `prompt_set`."""
    prompts = PROMPT_SETS[prompt_set]
    picks = torch.randint(len(prompts), (count,), generator=generator)
    return [prompts[i] for i in picks.tolist()]
