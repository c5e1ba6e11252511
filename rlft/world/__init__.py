"""The tiny world: 32x32 images of captioned shapes (`scenes`), a fixed judge that reads what an image shows
(`judge`), the tiny Stable Diffusion model trained on it and the small parts the other tiny models share
(`tiny_model`), its pretraining (`pretrain`) and the shipped weights (`tiny_weights/`).
Imports from rlft: nothing."""
