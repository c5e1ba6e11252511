"""`--dry-run`: what a run would start and hold, printed before anything starts.

The model is built on PyTorch's meta device from its configs (a hub model's JSON files, a folder's, or a
built-in's code), so its parameters are counted exactly without loading a weight; the tiny models are small
enough to load. From the counts: each process's parameter memory (frozen weights in the run's dtype), the
LoRA and its AdamW state (float32: weights, gradients and two moments), the data an epoch moves through Ray
Data, and the checkpoint's size. Activations are an estimate by a stated rule (`activation_rule`).
"""

import dataclasses
import json
from pathlib import Path

import torch

from rlft.configs import RunConfig, SamplingConfig
from rlft.zoo.names import GPU_ONLY_MODELS, PIPELINE_PARTS, check_model_name

GB = 1024**3
MODEL_PARTS = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
BYTES = {"float32": 4, "bfloat16": 2}


@dataclasses.dataclass(frozen=True)
class Counts:
    """Parameters per part of a pipeline, and what the activation rule needs of its denoiser."""

    family: str
    params: dict[str, int]
    denoiser: str  # "unet" or "transformer"
    lora: int  # LoRA parameters the run's rank and targets add
    layer_outputs: int  # output features summed over the denoiser's Linear and Conv2d layers
    latent_channels: int
    latent_scale: int  # image pixels per latent pixel, per side
    patch: int  # latent pixels per token, per side (1 for a UNet)
    resolution: int  # the model's own image side


def count_model(cfg: RunConfig) -> Counts:
    """`cfg.model`'s parameters, built on the meta device (the tiny models: loaded, they are small)."""
    kind = check_model_name(cfg.model)
    if kind in ("tiny", "tiny-folder", "tiny-random", "tiny-sdxl", "tiny-sd3", "tiny-flux"):
        from rlft.zoo.loading import load_pipeline

        pipe = load_pipeline(cfg.model)
    elif kind in GPU_ONLY_MODELS:
        from rlft.zoo.full_size import FULL_SIZE

        pipe = FULL_SIZE[kind](cfg.seed, device="meta", dtype=torch.bfloat16)
    elif kind == "sd15-random":
        from rlft.zoo.full_size import build_sd15_random_pipeline

        with torch.device("meta"):
            pipe = build_sd15_random_pipeline(cfg.seed)
    else:
        return counts_of(parts_from_configs(config_folder(cfg.model)), cfg)
    return counts_of(pipe.components | {"_class_name": type(pipe).__name__}, cfg)


def config_folder(name: str) -> Path:
    """A pipeline folder, or a hub model's JSON files (from the cache when offline; checked before)."""
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    import huggingface_hub
    from huggingface_hub import constants

    try:
        return Path(huggingface_hub.snapshot_download(name, allow_patterns=["*.json"], local_files_only=True))
    except OSError:  # not all cached (LocalEntryNotFoundError): fetch the configs (kilobytes) from the hub
        if constants.HF_HUB_OFFLINE:
            raise
        return Path(huggingface_hub.snapshot_download(name, allow_patterns=["*.json"]))


def parts_from_configs(folder: Path) -> dict:
    """Each model part of the pipeline in `folder`, built from its config on the meta device."""
    import diffusers
    import transformers

    index = json.loads((folder / "model_index.json").read_text())
    parts = {"_class_name": index["_class_name"]}
    for part in PIPELINE_PARTS[index["_class_name"]]:
        if part not in MODEL_PARTS or index.get(part) in (None, [None, None]):
            continue
        library, class_name = index[part]
        model_class = getattr(diffusers if library == "diffusers" else transformers, class_name)
        with torch.device("meta"):
            if library == "diffusers":
                parts[part] = model_class.from_config(model_class.load_config(folder / part))
            else:
                parts[part] = model_class(model_class.config_class.from_pretrained(folder / part))
    return parts


def counts_of(parts: dict, cfg: RunConfig) -> Counts:
    modules = {name: m for name, m in parts.items() if isinstance(m, torch.nn.Module)}
    denoiser = "unet" if "unet" in modules else "transformer"
    model = modules[denoiser]
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    vae = modules["vae"].config
    patch = getattr(model.config, "patch_size", None) or 1
    return Counts(
        family=str(parts["_class_name"]),
        params={name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()},
        denoiser=denoiser,
        lora=lora_parameters(model, cfg.lora_targets, cfg.lora_rank),
        layer_outputs=sum(getattr(m, "out_features", None) or m.out_channels for m in layers),
        latent_channels=vae.latent_channels,
        latent_scale=2 ** (len(vae.block_out_channels) - 1),
        patch=patch if denoiser == "transformer" else 1,
        resolution=vae.sample_size if isinstance(vae.sample_size, int) else 512,
    )


def lora_parameters(model: torch.nn.Module, targets: tuple[str, ...], rank: int) -> int:
    """What peft adds to each Linear whose name ends with a target: rank x (in + out) (A and B)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += rank * (module.in_features + module.out_features)
    return total


def activation_rule(c: Counts, resolution: int, samples: int, checkpointing: bool, dtype_bytes: int) -> int:
    """Activations kept for backward (an estimate): every Linear and Conv2d layer's output, at the full
    latent's token count, for each sample through the model with gradients; with gradient checkpointing a
    tenth of that (the blocks' inputs and one block's recomputed outputs). An upper bound for UNets, whose
    deeper blocks run at a quarter of the tokens or fewer."""
    tokens = (resolution // c.latent_scale // c.patch) ** 2
    kept = c.layer_outputs * tokens * samples * dtype_bytes
    return kept // 10 if checkpointing else kept


# Reward models' parameters where no config is at hand to count them: ImageReward is BLIP ViT-L + BERT-base,
# 447 M as counted on the model the image-reward package builds (its tokenizer needs the hub to build here).
REWARD_PARAMS = {"imagereward": 447_000_000}


def reward_parameters(spec: str) -> tuple[int, str]:
    """(parameters of the reward models `spec` names, how they were found): counted on the meta device from a
    cached or local CLIP config where there is one; the weight-free rewards have none."""
    total, unknown = 0, []
    for name in spec.split(","):
        base, _, folder = name.partition(":")
        if base in REWARD_PARAMS:
            total += REWARD_PARAMS[base]
        elif base in ("aesthetic", "pickscore"):
            counted = clip_parameters(base, folder)
            total += counted or 0
            unknown += [] if counted else [base]
    return total, (f" (not counted: {', '.join(unknown)}'s config is not cached here)" if unknown else "")


def clip_parameters(reward: str, folder: str) -> int | None:
    import huggingface_hub
    import transformers

    from rlft.rewards import aesthetic, pickscore

    source = folder or (aesthetic.HUB_CLIP if reward == "aesthetic" else pickscore.HUB_MODEL)
    config_file = (
        Path(folder) / "config.json"
        if folder
        else huggingface_hub.try_to_load_from_cache(source, "config.json")
    )
    if not isinstance(config_file, str | Path) or not Path(config_file).is_file():
        return None
    config = transformers.CLIPConfig.from_json_file(config_file)
    with torch.device("meta"):
        model = transformers.CLIPModel(config)
    if reward == "aesthetic":  # the vision tower and its projection, and the small MLP head
        model = torch.nn.ModuleList([model.vision_model, model.visual_projection])
    return sum(p.numel() for p in model.parameters())


def gb(n_bytes: float) -> str:
    return f"{n_bytes / GB:.2f} GB" if n_bytes >= GB / 100 else f"{n_bytes / 1024**2:.1f} MB"


def trained_parameters(cfg: RunConfig, c: Counts) -> int:
    return c.params[c.denoiser] if cfg.full_finetune else c.lora


def samples_with_gradients(cfg: RunConfig, c: Counts) -> tuple[int, str]:
    """(samples one forward with gradients carries, how it is counted): a micro-batch's items times the
    pair (D3PO) times guidance's two halves, or DRaFT's K steps."""
    workers = cfg.train_workers
    items = getattr(cfg, "micro_batch", None) or max(getattr(cfg, "batch_size", 1) // workers, 1)
    cfg_halves = 2 if getattr(cfg, "guidance_scale", 1.0) > 1 and c.family != "FluxPipeline" else 1
    if cfg.algorithm == "draft":
        steps, copies = cfg.steps_with_grad, cfg.lv_copies if cfg.variant == "draft-lv" else 1
        samples = items * copies * cfg_halves * steps
        return samples, f"{items} samples x {copies} (copies) x {cfg_halves} (guidance) x {steps} steps"
    pair = 2 if cfg.algorithm == "d3po" else 1
    return items * pair * cfg_halves, f"{items} items x {pair} (pair) x {cfg_halves} (guidance)"


def epoch_data(cfg: RunConfig, c: Counts, resolution: int) -> tuple[int, str]:
    """(bytes one epoch moves through Ray Data, what they are): float32 latents per training item."""
    latent = c.latent_channels * (resolution // c.latent_scale) ** 2 * 4
    if not isinstance(cfg, SamplingConfig):
        return 0, "the labelled batch's items (read from its folder)"
    if cfg.algorithm == "d3po":
        per_group = 1 if cfg.pairs == "best-worst" else cfg.group_size * (cfg.group_size - 1) // 2  # at most
        pairs = cfg.pairs_per_epoch * per_group
        if cfg.objective == "noised":
            items = pairs * cfg.noised_draws
            return items * 3 * latent, f"{items} (pair, draw) items of 3 latents"
        items = pairs * (cfg.num_steps - cfg.skip_final_steps)
        return items * 4 * latent, f"{items} (pair, step) items of 4 latents"
    if cfg.algorithm == "ddpo":
        items = cfg.images_per_epoch * cfg.steps_trained
        return items * 2 * latent, f"{items} (sample, step) items of 2 latents"
    return cfg.images_per_epoch * latent, f"{cfg.images_per_epoch} latents entering the trained steps"


def format_plan(cfg: RunConfig, c: Counts, gpu_here: bool = True) -> str:
    """The plan, a line per process kind and per figure; memory figures in GB."""
    resolution = getattr(cfg, "resolution", None) or c.resolution
    size = BYTES[cfg.dtype]
    frozen = sum(c.params.values()) * size
    trained = trained_parameters(cfg, c)
    optimizer = trained * 4 * 4  # float32 weights, gradients and AdamW's two moments
    samples, how = samples_with_gradients(cfg, c)
    activations = activation_rule(c, resolution, samples, cfg.gradient_checkpointing, size)
    data, moved = epoch_data(cfg, c, resolution)
    counts = ", ".join(f"{name} {n / 1e6:,.1f} M" for name, n in c.params.items())
    what = f"every weight of the {c.denoiser}" if cfg.full_finetune else f"LoRA rank {cfg.lora_rank}"
    lines = [
        f"plan for {cfg.algorithm} on {cfg.model} ({c.family}), {resolution} px, {cfg.dtype}",
        f"parameters: {counts}; trained: {trained / 1e6:,.2f} M ({what})",
    ]
    counts_of_actors = cfg.actor_counts()
    gpus = {"samplers": "sampler_gpus", "scorers": "scorer_gpus", "train_workers": "worker_gpus"}
    if cfg.ray:
        lines.append("processes (Ray): the driver (no model, no CPU slot needed)")
        for kind, n in counts_of_actors.items():
            if n:
                share = getattr(cfg, gpus[kind])
                lines.append(f"  {n} x {kind[:-1].replace('_', ' ')}: {cfg.actor_cpus:g} CPU, {share:g} GPU")
    else:
        lines.append("processes: one (--no-ray): sampling, scoring and training here")
    reward, note = reward_parameters(cfg.reward) if isinstance(cfg, SamplingConfig) else (0, "")
    where = "scorer" if counts_of_actors.get("scorers") else "sampler (it scores its own images)"
    lines += [
        f"memory, sampler: frozen pipeline {gb(frozen)} + LoRA {gb(trained * 4)}",
        f"memory, {where}: reward model {gb(reward * 4)}{note}",
        f"memory, train worker: frozen pipeline {gb(frozen)} + trained weights, gradients and AdamW "
        f"{gb(optimizer)}"
        + (f" + reference copy {gb(c.params[c.denoiser] * 4)}" if cfg.full_finetune else "")
        + (
            f" + reward model {gb(reward * 4)} (DRaFT differentiates it here)"
            if cfg.algorithm == "draft"
            else ""
        )
        + f" + activations {gb(activations)} (estimate: {how} through the {c.denoiser}, "
        + ("gradient checkpointing on" if cfg.gradient_checkpointing else "no gradient checkpointing")
        + "; rule in rlft/plan.py)",
        f"data per epoch through Ray Data: {gb(data)} ({moved})",
        f"checkpoint: {gb(trained * 4 * 4)} per epoch (float32: the trained weights in the state and in the "
        "adapter, AdamW's two moments)",
        "nothing was started: no Ray, no model weights loaded, no run folder, no MLflow run",
    ]
    if not gpu_here and (cfg.device == "cuda" or any(getattr(cfg, g, 0) for g in gpus.values())):
        lines.append("this machine has no CUDA GPU: the run itself needs a GPU cluster (--ray-address)")
    return "\n".join(lines)
