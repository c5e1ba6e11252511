"""Sampling a batch for people to label: k images per prompt from one shared initial noise, kept on disk.

The samples are drawn exactly as one D3PO epoch draws them (rlft/epoch.py: the epoch's prompts, seeded
chunks, every latent kept, eta > 0): `--round r --seed s` on the base model gives the same groups as epoch r
of `jobs/d3po.py --seed s`. With `--adapter` the policy carries a trained LoRA (the D3PO job's
`runs/<run>/adapter`, or a previous human-feedback round's), loaded into the same `Policy` training uses.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlft.configs import D3POConfig
from rlft.configs.checks import check
from rlft.diffusion.adapters import adapter_digest, adapter_file, adapter_lora_shape, load_adapter
from rlft.diffusion.policy import build_policy
from rlft.epoch import concat_samples, epoch_prompts, plan_chunks, sample_chunk
from rlft.feedback.batch_folder import MANIFEST, write_batch

MAX_GROUP_SIZE = 8  # the page's keys 1-8 pick an image


@dataclass(frozen=True)
class SampleGroupsConfig:
    out: str
    """Folder for the batch (created; must not already hold a complete batch)."""
    model: str = "tiny"
    """'tiny' (offline, 32x32), another of rlft's built-in models, a hub id or a pipeline folder."""
    adapter: str | None = None
    """LoRA adapter folder to sample from (runs/<run>/adapter); default: the base model."""
    groups: int = 8
    """Prompts in the batch; each gives one group of images to compare."""
    group_size: int = 4
    """Images per group, all from the same initial noise (2 to 8)."""
    prompts: str = "shapes"
    """Prompts the groups are drawn from: a built-in set or a text file, as the D3PO job's --prompts; the
    default, shapes, holds the tiny model's captions ("a small red circle on a noisy blue background")."""
    round: int = 0
    """Labelling round: seeds this batch's prompts and noise (as the D3PO job's epoch number does)."""
    seed: int = 0
    """Run seed: the tiny model's weights, the prompt and noise streams."""
    num_steps: int = 10
    """DDIM denoising steps per image (training on the labels uses the same)."""
    guidance_scale: float = 5.0
    """Classifier-free guidance weight."""
    eta: float = 1.0
    """DDIM stochasticity; > 0, since D3PO needs each step's log-probability."""
    resolution: int | None = None
    """Image side in pixels; default: the model's own."""
    sample_batch: int = 8
    """Groups per sampler call."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to sample: 'auto' picks CUDA when torch sees it."""
    threads: int | None = None
    """CPU threads for torch; default: torch's own choice."""
    config: str | None = None
    """A recipe: the name of one shipped with rlft (`rlft recipes` lists them) or a TOML file of this job's
    fields; flags given beside it override it."""

    def __post_init__(self) -> None:
        allowed = f"2 to {MAX_GROUP_SIZE} (images compared per prompt; keys 1-{MAX_GROUP_SIZE} pick one)"
        check(2 <= self.group_size <= MAX_GROUP_SIZE, "group_size", self.group_size, allowed)
        check(self.groups >= 1, "groups", self.groups, "at least 1")
        check(self.round >= 0, "round", self.round, "at least 0")
        policy_config(self)  # the model, prompts, steps and eta, checked as the D3PO job checks them


def check_folders(cfg: SampleGroupsConfig) -> None:
    """The checks that touch the disk: an existing adapter, an output folder that holds no batch yet."""
    if cfg.adapter is not None:
        adapter_file(cfg.adapter)
    if (Path(cfg.out) / MANIFEST).exists():
        raise ValueError(f"out={cfg.out!r} already holds a labelling batch ({MANIFEST}): choose a new folder")


def policy_config(cfg: SampleGroupsConfig, lora: dict | None = None) -> D3POConfig:
    """The D3PO config whose sampling this batch repeats; lora: the adapter's LoRA shape
    (`adapter_lora_shape`), default D3POConfig's own."""
    return D3POConfig(
        model=cfg.model,
        seed=cfg.seed,
        prompts=cfg.prompts,
        num_steps=cfg.num_steps,
        guidance_scale=cfg.guidance_scale,
        eta=cfg.eta,
        resolution=cfg.resolution,
        group_size=cfg.group_size,
        pairs_per_epoch=cfg.groups,
        sample_batch=cfg.sample_batch,
        device=cfg.device,
        threads=cfg.threads,
        ray=False,
        track=False,
        **(lora or {}),
    )


def sample_groups(cfg: SampleGroupsConfig, log: Callable[[str], None] = print) -> Path:
    """Sample the batch and write it to cfg.out; returns the folder."""
    check_folders(cfg)
    d3po = policy_config(cfg, adapter_lora_shape(cfg.adapter) if cfg.adapter else None)
    start = time.perf_counter()
    pipe, policy = build_policy(d3po)
    if cfg.adapter:
        load_adapter(policy, cfg.adapter)
    prompts = epoch_prompts(d3po, cfg.round)
    settings = d3po.sampling_settings()
    chunks = plan_chunks(prompts, cfg.sample_batch, cfg.seed, cfg.round)
    samples = concat_samples([sample_chunk(pipe, chunk, settings) for chunk in chunks])
    info = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": cfg.model,
        "adapter": str(Path(cfg.adapter).resolve()) if cfg.adapter else None,
        "adapter_sha256": adapter_digest(cfg.adapter) if cfg.adapter else None,
        "seed": cfg.seed,
        "round": cfg.round,
        "prompt_set": cfg.prompts,
        "settings": {
            "num_steps": cfg.num_steps,
            "guidance_scale": cfg.guidance_scale,
            "eta": cfg.eta,
            "resolution": samples["images"].shape[-1],
            "group_size": cfg.group_size,
        },
    }
    folder = write_batch(cfg.out, samples, prompts, info)
    log(
        f"{cfg.groups} groups x {cfg.group_size} images ({cfg.model}"
        f"{', adapter ' + cfg.adapter if cfg.adapter else ''}) in {folder} "
        f"| {time.perf_counter() - start:.1f} s"
    )
    return folder
