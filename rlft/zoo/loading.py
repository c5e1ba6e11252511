"""Loading a pipeline by name: a built-in model (built or read offline), a hub id or a folder.

"tiny" is pretrained on rlft/world/scenes.py's captioned shapes (rlft/world/pretrain.py) and ships
with the package as safetensors; "tiny-random" is the same architecture with random weights (noise in, noise
out), for tests that need only speed (both in rlft/world/tiny_model.py); "tiny-sdxl", "tiny-sd3" and
"tiny-flux" are the newer families' structures at the same size (rlft/zoo/tiny_sdxl_sd3_flux.py);
"sd15-random" (models.py), "sd35-random" and "flux-random" (rlft/zoo/full_size.py) are full-size
shapes with random weights, for GPU memory and speed work.

A hub id or folder loads as the pipeline class its model_index.json names, when rlft trains that class
(rlft/zoo/names.py's SUPPORTED_PIPELINES). UNet pipelines come back with a `DDIMScheduler` (the
sampler's log-probabilities need DDIM; flow-matching ones keep their `FlowMatchEulerDiscreteScheduler`), the
safety checker off, all weights frozen and the progress bar off. Names are checked before anything is built.
"""

import diffusers
import torch
from diffusers import DDIMScheduler, DiffusionPipeline

from rlft.world.tiny_model import build_tiny_pipeline, load_tiny_pretrained
from rlft.zoo.full_size import FULL_SIZE, build_sd15_random_pipeline
from rlft.zoo.names import check_model_name, check_pipeline_class
from rlft.zoo.tiny_sdxl_sd3_flux import TINY_FAMILIES


def load_pipeline(
    name_or_path: str,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DiffusionPipeline:
    """A frozen pipeline on `device` in `dtype`: SD 1.x/2.x and SDXL with a DDIM scheduler, SD3 with its own.

    "tiny" loads the pretrained tiny model shipped with the package; "tiny-random" builds its architecture
    with random weights from `seed` (docs/tiny-model.md); "tiny-sdxl", "tiny-sd3" and "tiny-flux"
    build those families' tiny versions from `seed`; "sd15-random", "sd35-random" (Stable Diffusion 3.5
    Large) and "flux-random" (FLUX.1-dev) build full-size shapes with random weights, for speed and memory
    work (the last two created directly on `device` in `dtype`); anything else is a hub id or a local
    folder, loaded with diffusers' `from_pretrained` as the class its model_index.json names.
    """
    kind = check_model_name(name_or_path)
    if kind == "tiny":
        pipe = load_tiny_pretrained()
    elif kind == "tiny-folder":
        pipe = load_tiny_pretrained(name_or_path)
    elif kind == "tiny-random":
        pipe = build_tiny_pipeline(seed)
    elif kind == "sd15-random":
        pipe = build_sd15_random_pipeline(seed)
    elif kind in ("tiny-sdxl", "tiny-sd3", "tiny-flux"):
        pipe = TINY_FAMILIES[kind](seed)
    elif kind in FULL_SIZE:
        if torch.device(device).type == "cpu":  # GPU_ONLY_MODELS: configs refuse device='cpu' already
            raise ValueError(
                f"model {name_or_path!r} is for GPU memory and speed work (13-17 B parameters with its text "
                "encoders, random weights): choose device='cuda', or tiny-sd3 / tiny-flux on a CPU"
            )
        pipe = FULL_SIZE[kind](seed, device=device, dtype=dtype)
    else:
        pipe = load_pretrained(name_or_path, dtype)
    pipe = pipe.to(device) if dtype == torch.float32 else cast(pipe, device, dtype)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cast(pipe: DiffusionPipeline, device: str | torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    """`pipe` on `device` in `dtype`. diffusers warns on every dtype cast that some modules "should be kept in
    float32" even when its list of them is empty, as it is for every model rlft builds: that warning is
    silenced only when no component names a module to keep."""
    keeps = any(getattr(m, "_keep_in_fp32_modules", None) for m in pipe.components.values())
    level = diffusers.utils.logging.get_verbosity()
    if not keeps:
        diffusers.utils.logging.set_verbosity_error()
    try:
        return pipe.to(device=device, dtype=dtype)
    finally:
        diffusers.utils.logging.set_verbosity(level)


def load_pretrained(name_or_path: str, dtype: torch.dtype) -> DiffusionPipeline:
    """A hub id or folder as the pipeline class its model_index.json names (a ValueError naming the class
    when rlft does not train it, before any weights load)."""
    index = DiffusionPipeline.load_config(name_or_path)
    class_name = index["_class_name"]
    check_pipeline_class(class_name, f"model {name_or_path!r}")
    pipeline_class = getattr(diffusers, class_name)
    if class_name == "StableDiffusionPipeline":
        kwargs = {"safety_checker": None, "requires_safety_checker": False}
    else:  # SD3 without T5, as diffusers allows: say so, or from_pretrained asks for it
        optional = ("text_encoder_3", "tokenizer_3")
        kwargs = {part: None for part in optional if part in index and index[part] in (None, [None, None])}
    pipe = pipeline_class.from_pretrained(name_or_path, torch_dtype=dtype, **kwargs)
    if hasattr(pipe, "unet"):  # the UNet families' log-probabilities are DDIM's
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe
