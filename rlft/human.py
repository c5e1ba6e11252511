"""Training on people's labels: a labelled batch as D3PO samples and pairs, and one training round.

A round of the human-feedback loop: `jobs/sample_groups.py` samples a batch (from the base model or the
last round's adapter), people label it on `jobs/label.py`'s page, `train_on_labels` applies D3PO to the
majority pairs and saves an adapter, and the next round samples from that adapter. The reference stays the
base model (the adapter switched off), as in the D3PO job.
"""

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from rlft.adapters import adapter_digest, adapter_lora_shape, load_adapter
from rlft.batch_folder import read_images, read_manifest, read_trajectories
from rlft.checkpoint import replace_folder, staging_folder
from rlft.config import HUMAN, D3POConfig
from rlft.d3po import pair_items
from rlft.epoch import item_order, iterate_batches
from rlft.label_pairs import majority_pairs
from rlft.labels import DB_FILE, LabelError, check_label, connect, read_labels
from rlft.loop import build_policy, make_d3po_learner
from rlft.models import BUILTIN_MODELS
from rlft.policy import Policy
from rlft.sampling import encode_prompts
from rlft.storage import RunStorage
from rlft.tracking import Tracker


def labelled_items(folder: str | Path) -> tuple[dict[str, Tensor], dict]:
    """A labelled batch as (samples, labels), or a ValueError naming the folder and what is wrong.

    samples: latents (B, S+1, C, h, w), timesteps (S,), group (B,) indexing labels["prompts"], images
    (B, 3, H, W) from the PNGs: the shape of rlft/epoch.py's `concat_samples`. labels: index_w, index_l (P,)
    (sample indices of each majority pair's winner and loser), prompts, pairs, ties, groups_labelled,
    annotators, manifest, manifest_sha256.
    """
    manifest, digest = read_manifest(folder)
    if not (Path(folder) / DB_FILE).is_file():
        raise ValueError(f"{str(folder)!r} has no labels yet ({DB_FILE}): label it with jobs/label.py")
    conn = connect(folder)
    try:
        stored = read_labels(conn)
    finally:
        conn.close()
    if not stored:
        raise ValueError(f"{str(folder)!r} has no labels yet: label it with jobs/label.py")
    groups = {g["group"]: [image["id"] for image in g["images"]] for g in manifest["groups"]}
    for label, label_digest in stored:
        if label.group not in groups:
            raise ValueError(f"{str(folder)!r}: a label for group {label.group}, which the batch lacks")
        try:
            check_label(label, groups[label.group])
        except LabelError as error:
            raise ValueError(f"{str(folder)!r}: {label.annotator}'s label: {error}") from error
        if label_digest != digest:
            raise ValueError(
                f"{str(folder)!r}: {label.annotator}'s label of group {label.group} was made for another "
                "manifest (the batch changed after labelling)"
            )
    labels = [label for label, _ in stored]
    pairs, ties = majority_pairs(labels, groups)
    index = {image["id"]: image["index"] for g in manifest["groups"] for image in g["images"]}
    samples = read_trajectories(folder, manifest) | {"images": read_images(folder, manifest)}
    return samples, {
        "index_w": torch.tensor([index[w] for w, _ in pairs], dtype=torch.long),
        "index_l": torch.tensor([index[lose] for _, lose in pairs], dtype=torch.long),
        "prompts": list(manifest["prompts"]),
        "pairs": len(pairs),
        "ties": ties,
        "groups_labelled": len({label.group for label in labels}),
        "annotators": sorted({label.annotator for label in labels}),
        "manifest": manifest,
        "manifest_sha256": digest,
    }


def check_fits(cfg: D3POConfig, manifest: dict, folder: str | Path) -> None:
    """Training recomputes each step's log-probability, so it needs the batch's model and sampling."""
    sampled = manifest["settings"] | {"model": manifest["model"]}
    fields = ["model", "num_steps", "guidance_scale", "eta"]
    if cfg.model in BUILTIN_MODELS:  # their weights come from the seed
        sampled["seed"] = manifest["seed"]
        fields.append("seed")
    for field in fields:
        if getattr(cfg, field) != sampled[field]:
            raise ValueError(
                f"{field}={getattr(cfg, field)!r} does not match the labelled batch {str(folder)!r}, "
                f"sampled with {field}={sampled[field]!r}"
            )


def start_adapter(manifest: dict, folder: str | Path) -> str | None:
    """The adapter the batch was sampled from (training continues it), checked unchanged since sampling."""
    adapter = manifest.get("adapter")
    if adapter is not None and adapter_digest(adapter) != manifest["adapter_sha256"]:
        raise ValueError(f"{str(folder)!r} was sampled from adapter {adapter!r}, which has changed since")
    return adapter


def save_adapter_atomic(policy: Policy, folder: Path) -> Path:
    """Write the adapter beside `folder`, then rename it into place: a crash leaves the old one whole."""
    staging = staging_folder(folder)
    policy.save(staging)
    replace_folder(folder, staging)
    return folder


def human_folder(cfg: D3POConfig) -> str:
    """The labelled batch folder of a `human:<folder>` reward."""
    return cfg.reward.removeprefix(HUMAN)


def check_labelled(cfg: D3POConfig, folder: str | Path) -> tuple[D3POConfig, dict[str, Tensor], dict]:
    """(cfg, samples, labels) for training on the folder's labels, or a ValueError naming the folder.

    cfg takes the LoRA shape of the adapter the batch was sampled from, when there was one."""
    samples, labels = labelled_items(folder)
    check_fits(cfg, labels["manifest"], folder)
    if not labels["pairs"]:
        raise ValueError(f"{str(folder)!r}: the labels give no preference pairs ({labels['ties']} ties)")
    adapter = start_adapter(labels["manifest"], folder)
    if adapter is not None:  # continuing an adapter: its LoRA shape, whatever cfg's default
        cfg = dataclasses.replace(cfg, **adapter_lora_shape(adapter))
    return cfg, samples, labels


def train_human(
    cfg: D3POConfig,
    folder: str | Path,
    run_dir: str | Path,
    tracker: Tracker | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """D3PO on the folder's majority pairs for cfg.epochs passes; writes run_dir/adapter and returns one
    metrics dict per pass (loss, preference_accuracy, grad_norm, pairs, ties, epoch_time_s), each also
    logged to `tracker` when there is one."""
    cfg, samples, labels = check_labelled(cfg, folder)
    adapter = labels["manifest"].get("adapter")
    pipe, policy = build_policy(cfg)
    if adapter is not None:
        load_adapter(policy, adapter)
    learner = make_d3po_learner(cfg, pipe, policy)
    items = pair_items(
        samples["latents"], samples["group"], samples["timesteps"], labels["index_w"], labels["index_l"]
    )
    items = {k: v.to(pipe.device) for k, v in items.items()}
    embeds, uncond = encode_prompts(pipe, labels["prompts"])
    log(f"{labels['pairs']} pairs ({labels['ties']} ties) from {len(labels['annotators'])} annotator(s)")
    history = []
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        order = item_order(len(items["prompt"]), cfg, epoch)
        metrics = learner.train_epoch(iterate_batches(items, cfg.batch_size, order), embeds, uncond)
        metrics = {k: float(v) for k, v in metrics.items()} | {
            "pairs": float(labels["pairs"]),
            "ties": float(labels["ties"]),
            "epoch_time_s": time.perf_counter() - start,
        }
        history.append(metrics)
        log(
            f"pass {epoch:3d} | loss {metrics['loss']:.4f} | acc {metrics['preference_accuracy']:.2f} "
            f"| grad {metrics['grad_norm']:.1e} | {metrics['epoch_time_s']:.1f} s"
        )
        if tracker is not None:
            tracker.log_epoch(epoch, metrics)
    saved = save_adapter_atomic(policy, Path(run_dir) / "adapter")
    if cfg.storage:  # shared storage keeps the adapter when this disk is lost, as run_epochs does
        RunStorage(cfg.storage, Path(run_dir).name).upload_folder(saved, "adapter")
    if tracker is not None:
        tracker.log_folder(saved, "adapter")
    return history


def train_on_labels(cfg: D3POConfig, folder: str | Path, log: Callable[[str], None] = print) -> Path:
    """One human-feedback round: D3PO on the folder's majority pairs for cfg.epochs passes; returns the
    adapter folder (runs_dir/run_name/adapter), which `jobs/sample_groups.py --adapter` samples from."""
    run_dir = Path(cfg.runs_dir) / (cfg.run_name or f"human-{Path(folder).resolve().name}")
    train_human(cfg, folder, run_dir, log=log)
    return run_dir / "adapter"
