"""Rewards by name (`registry.get_reward`): JPEG size, brightness, smoothness, the tiny world's judge
(colour alignment), the LAION aesthetic predictor, ImageReward and PickScore, each with its differentiable
version where one exists.
Imports from rlft: prompts and world."""
