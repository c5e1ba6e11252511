"""The trainable policy and sampling: the denoising model with a LoRA adapter (through peft) or fully
fine-tuned, and its frozen reference (`policy`); adapters saved and read in diffusers' format (`adapters`);
trajectories for groups sharing x_T, with log-probabilities (`sampling`).
Imports from rlft: families and zoo."""
