"""Diffusion models and sampling: pipelines by name (the shipped tiny model among them), the trainable policy
(LoRA through peft, or full fine-tuning) and its adapters, DDIM steps with log-probabilities, trajectories
for groups sharing x_T, and the tiny model's captioned world and pretraining. Imports nothing else of rlft."""
