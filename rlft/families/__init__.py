"""The model families rlft trains and their step math: what differs between Stable Diffusion 1.x, SDXL, SD3
and FLUX behind one `Denoiser` (`registry.denoiser_for`; `denoiser` for the UNet families, `flow_denoisers`
for the flow-matching ones), the DDIM step with the log-probability of the step taken (`ddim`) and the
flow-matching SDE step with its own (`flow_sde`). No model names, weights or files.
Imports from rlft: nothing."""
