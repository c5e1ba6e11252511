"""Training on people's labels: a labelled batch as D3PO samples and pairs, and one training round.

A round of the human-feedback loop: `jobs/sample_groups.py` samples a batch (from the base model or the
last round's adapter), people label it on `jobs/label.py`'s page, `train_on_labels` applies D3PO to the
majority pairs and saves an adapter, and the next round samples from that adapter. The reference stays the
base model (the adapter switched off), as in the D3PO job.
"""

import time
from contextlib import contextmanager
from pathlib import Path

import ray
import torch
from torch import Tensor

from rlft.algorithms.backend import Log
from rlft.algorithms.d3po import make_learner
from rlft.algorithms.pairs import pair_items
from rlft.diffusion.adapters import adapter_digest, adapter_state
from rlft.diffusion.policy import LocalTrained, build_policy
from rlft.diffusion.sampling import encode_prompts
from rlft.distributed.cluster import start_ray
from rlft.distributed.ray_loop import RayTrained, train_on_workers
from rlft.distributed.train_workers import TrainWorkers
from rlft.epoch import item_order, iterate_batches
from rlft.feedback.batch_folder import read_images, read_manifest, read_trajectories
from rlft.feedback.label_pairs import majority_pairs
from rlft.feedback.labels import DB_FILE, LabelError, check_label, connect, read_labels
from rlft.feedback.labels_config import D3POLabelsConfig
from rlft.loop import run_epochs
from rlft.runs.tracking import Tracker


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


@contextmanager
def local_trainer(
    cfg: D3POLabelsConfig, run_dir: Path, items: dict, prompts: list[str], start: dict | None, log: Log
):
    """(trained, train_epoch) in this process: the policy, with the start adapter's weights if any."""
    pipe, policy = build_policy(cfg)
    if start is not None:
        policy.load_state_dict(start)
    learner = make_learner(cfg, pipe, policy)
    items = {k: v.to(pipe.device) for k, v in items.items()}
    cond, uncond = encode_prompts(pipe, prompts)

    def train_epoch(epoch: int) -> dict[str, float]:
        order = item_order(len(items["prompt"]), cfg, epoch)
        return learner.train_epoch(iterate_batches(items, cfg.batch_size, order), cond, uncond)

    yield LocalTrained(policy, learner.optimizer), train_epoch


@contextmanager
def ray_trainer(
    cfg: D3POLabelsConfig, run_dir: Path, items: dict, prompts: list[str], start: dict | None, log: Log
):
    """(trained, train_epoch) on Ray Train workers, fed the items through a Ray Data shuffle as the D3PO job
    feeds its sampled pairs; no sampler or scorer starts. The workers stop when the block ends."""
    workers = TrainWorkers(cfg, run_dir / "ray", run_dir.name)
    try:
        trained = RayTrained(workers, samplers=[])
        workers.publish()
        trained.fetch()
        if start is not None:  # a fresh optimizer; a resumed checkpoint loads over both afterwards
            trained.load({"weights": start, "optimizer": trained.state()["optimizer"]})
        log(f"{cfg.train_workers} train worker(s) ready")

        def train_epoch(epoch: int) -> dict[str, float]:
            metrics, _, timing = train_on_workers(cfg, trained, epoch, prompts, items, log)
            return metrics | timing

        yield trained, train_epoch
    finally:
        workers.stop()


def train_human(
    cfg: D3POLabelsConfig,
    run_dir: str | Path,
    tracker: Tracker | None = None,
    log: Log = print,
    checked: tuple[dict, dict] | None = None,
) -> list[dict[str, float]]:
    """D3PO on the majority pairs of cfg.batch for cfg.epochs passes, on Ray Train workers (cfg.ray; Ray must
    be running) or in this process. Each pass is an epoch of `run_epochs`: checkpointed, resumed after the
    last finished one when started again on the same run_dir, logged to `tracker`. Writes run_dir/adapter and
    returns one metrics dict per pass (loss, preference_accuracy, grad_norm, pairs, ties, items_per_s,
    epoch_time_s). `checked`: what `check_labelled(cfg)` gave, when the caller has it already (the job
    checks the batch before Ray starts), so the batch is read once."""
    samples, labels = checked or check_labelled(cfg)
    adapter = labels["manifest"].get("adapter")
    items = pair_items(
        samples["latents"], samples["group"], samples["timesteps"], labels["index_w"], labels["index_l"]
    )
    log(f"{labels['pairs']} pairs ({labels['ties']} ties) from {len(labels['annotators'])} annotator(s)")
    start = adapter_state(adapter) if adapter is not None else None
    trainer = ray_trainer if cfg.ray else local_trainer
    with trainer(cfg, Path(run_dir), items, labels["prompts"], start, log) as (trained, train_epoch):

        def one_epoch(epoch: int):  # nothing sampled: no rewards, no images
            began = time.perf_counter()
            metrics = train_epoch(epoch)
            speed = len(items["prompt"]) / (time.perf_counter() - began)
            return (
                metrics | {"pairs": labels["pairs"], "ties": labels["ties"], "items_per_s": speed},
                None,
                None,
            )

        return run_epochs(cfg, Path(run_dir), trained, one_epoch, tracker, log)


def train_on_labels(cfg: D3POLabelsConfig, log: Log = print) -> Path:
    """One human-feedback round: D3PO on the majority pairs of cfg.batch for cfg.epochs passes (on Ray when
    cfg.ray: joined or started here as the jobs do), with no tracking; returns the adapter folder
    (runs_dir/run_name/adapter), which `jobs/sample_groups.py --adapter` samples from."""
    run_dir = Path(cfg.runs_dir) / (cfg.run_name or f"human-{Path(cfg.batch).resolve().name}")
    started = cfg.ray and start_ray(cfg, log)
    try:
        train_human(cfg, run_dir, log=log)
    finally:
        if started:
            ray.shutdown()
    return run_dir / "adapter"
