"""The model zoo: every model rlft can train, by name. `names` checks built-in names, hub ids and pipeline
folders without loading anything; `loading` loads any of them (built-in, hub id or folder); the built-in
random-weight ones are tiny SDXL, SD3 and FLUX (`tiny_sdxl_sd3_flux`) and Stable Diffusion 1.5, SD 3.5
Large and FLUX.1-dev at full size for GPU work (`full_size`). The tiny pretrained model itself belongs to
the tiny world (rlft/world/), whose parts the tiny ones here share.
Imports from rlft: prompts and world."""
