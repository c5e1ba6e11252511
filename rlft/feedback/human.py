"""Training on people's labels: a labelled batch as D3PO samples and pairs, and the epoch over them.

A round of the human-feedback loop: `jobs/sample_groups.py` samples a batch (from the base model or the
last round's adapter), people label it on `jobs/label.py`'s page, D3PO trains on the majority pairs
(rlft/training.py's `train_on_labels`) and saves an adapter, and the next round samples from that adapter.
The reference stays the base model (the adapter switched off), as in the D3PO job.

`labels_epoch` is that training's epoch: D3PO's learner over the batch's fixed (pair, step) items, nothing
sampled. It runs on whatever trainer it is given (rlft/algorithms/backend.py's `Trainer`: in this process, or
Ray Train workers fed through the same shuffle as a sampled run's), so this package knows nothing of Ray.
"""

import time
from pathlib import Path

import torch
from torch import Tensor

from rlft.algorithms.backend import EpochFn, Log, Trainer
from rlft.algorithms.pairs import pair_items
from rlft.diffusion.adapters import adapter_digest, adapter_state
from rlft.feedback.batch_folder import read_images, read_manifest, read_trajectories
from rlft.feedback.label_pairs import majority_pairs
from rlft.feedback.labels import DB_FILE, LabelError, check_label, connect, read_labels
from rlft.feedback.labels_config import D3POLabelsConfig


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


def start_adapter(manifest: dict, folder: str | Path) -> str | None:
    """The adapter the batch was sampled from (training continues it), checked unchanged since sampling."""
    adapter = manifest.get("adapter")
    if adapter is not None and adapter_digest(adapter) != manifest["adapter_sha256"]:
        raise ValueError(f"{str(folder)!r} was sampled from adapter {adapter!r}, which has changed since")
    return adapter


def check_labelled(cfg: D3POLabelsConfig) -> tuple[dict[str, Tensor], dict]:
    """(samples, labels) of the batch cfg trains on, or a ValueError naming the folder."""
    samples, labels = labelled_items(cfg.batch)
    if not labels["pairs"]:
        raise ValueError(f"{cfg.batch!r}: the labels give no preference pairs ({labels['ties']} ties)")
    items = labels["pairs"] * cfg.num_steps  # one per (pair, step)
    if cfg.ray and items < cfg.train_workers:
        raise ValueError(
            f"train_workers={cfg.train_workers} is not allowed: {cfg.batch!r} gives {items} training items"
        )
    start_adapter(labels["manifest"], cfg.batch)
    return samples, labels


def labels_epoch(
    cfg: D3POLabelsConfig, trainer: Trainer, checked: tuple[dict, dict], log: Log = print
) -> EpochFn:
    """One pass over the majority pairs of the batch `checked` holds (what `check_labelled(cfg)` gave) on
    `trainer`, whose weights start from the adapter the batch was sampled from, if any (a resumed checkpoint
    loads over them afterwards). Each pass's metrics: the learner's (loss, preference_accuracy, grad_norm),
    pairs, ties, items_per_s and the trainer's timing."""
    samples, labels = checked
    items = pair_items(
        samples["latents"], samples["group"], samples["timesteps"], labels["index_w"], labels["index_l"]
    )
    log(f"{labels['pairs']} pairs ({labels['ties']} ties) from {len(labels['annotators'])} annotator(s)")
    adapter = labels["manifest"].get("adapter")
    if adapter is not None:  # with a fresh optimizer
        trainer.trained.load(
            {"weights": adapter_state(adapter), "optimizer": trainer.trained.state()["optimizer"]}
        )
    counts = {"pairs": labels["pairs"], "ties": labels["ties"]}

    def one_epoch(epoch: int):  # nothing sampled: no rewards, no images
        began = time.perf_counter()
        metrics, _, timing = trainer.train(epoch, labels["prompts"], items)
        speed = len(items["prompt"]) / (time.perf_counter() - began)
        return metrics | timing | counts | {"items_per_s": speed}, None, None

    return one_epoch
