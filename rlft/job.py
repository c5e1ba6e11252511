"""What `jobs/d3po.py` and `jobs/draft.py` do: read the flags, check everything, then train and report.

Every check that can fail (the config, the tracking store, the Ray cluster's resources) runs before an
actor starts or an MLflow run is created, and a failure exits with one line naming the bad field.
"""

import logging
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import ray
import tyro

from rlft.distributed.cluster import start_ray
from rlft.distributed.ray_loop import ray_train
from rlft.feedback.human import check_labelled, human_folder, train_human
from rlft.local import train_local
from rlft.loop import GRID_FILE
from rlft.runs.config import D3POConfig, DRaFTConfig
from rlft.runs.storage import check_reachable
from rlft.runs.tracking import check_tracking_uri, open_run, tracking_uri


def is_human(cfg: D3POConfig | DRaFTConfig) -> bool:
    """A D3PO run on people's labels (reward human:<folder>): nothing sampled, only trained."""
    return cfg.algorithm == "d3po" and cfg.human


def headline(cfg: D3POConfig | DRaFTConfig) -> str:
    name, work = cfg.describe()
    if is_human(cfg):
        work = f"passes over the labelled pairs of {human_folder(cfg)!r}"
    actors = ", ".join(f"{n} {kind.replace('_', ' ')[:-1]}(s)" for kind, n in cfg.actor_counts().items() if n)
    where = f"Ray: {actors}" if cfg.ray else "one process"
    return f"{name} | model {cfg.model} | reward {cfg.reward} | {cfg.epochs} epochs x {work} | {where}"


def summary(history: list[dict[str, float]], run_dir: Path) -> str:
    """The last line: the fixed evaluation set's reward before and after training (what shows learning),
    the paired gain in standard errors, and where the before/after grid and the adapter are."""
    rewards = [h["reward_mean"] for h in history]
    evaluated = [h for h in history if "eval_gain_mean" in h]
    if not evaluated:
        return f"train reward: first {rewards[0]:.4f}, last {rewards[-1]:.4f} | adapter in {run_dir}/adapter"
    m = evaluated[-1]
    gain, se = m["eval_gain_mean"], m["eval_gain_se"]
    return (
        f"eval reward: base {m['eval_reward_base_mean']:.4f} -> {m['eval_reward_mean']:.4f} "
        f"(gain {gain:+.4f} +- {se:.4f}, {gain / se if se else float('nan'):+.1f} standard errors) | "
        f"before/after grid: {run_dir / GRID_FILE} | adapter in {run_dir}/adapter"
    )


def run_job(config_type: type[D3POConfig] | type[DRaFTConfig], algorithm: str, description: str) -> None:
    started_ray = False
    for name in ("mlflow", "alembic"):  # their start-up INFO lines are noise in a run's output
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        cfg = tyro.cli(config_type, description=description)
        if cfg.track:
            check_tracking_uri(tracking_uri())
        if cfg.storage:
            check_reachable(cfg.storage)
        # A bad batch folder is named before MLflow starts; the batch read here is the one trained on.
        checked = check_labelled(cfg, human_folder(cfg)) if is_human(cfg) else None
        print(headline(cfg), flush=True)
        started_ray = cfg.ray and start_ray(cfg)
        run_dir, tracker = open_run(cfg, algorithm)
    except ValueError as error:
        if started_ray:
            ray.shutdown()
        sys.exit(f"error: {error}")
    try:
        if checked is not None:
            train = partial(train_human, folder=human_folder(cfg), checked=checked)
        elif cfg.ray:
            train = ray_train
        else:
            train = train_local
        with tracker or nullcontext():
            history = train(cfg, run_dir=run_dir, tracker=tracker)
    finally:
        if started_ray:
            ray.shutdown()
    if is_human(cfg):  # no rewards: the labels are the signal
        first, last = history[0], history[-1]
        print(
            f"labels: {last['pairs']:.0f} pairs ({last['ties']:.0f} ties) | loss: first {first['loss']:.4f}, "
            f"last {last['loss']:.4f} | accuracy: first {first['preference_accuracy']:.2f}, last "
            f"{last['preference_accuracy']:.2f} | adapter in {run_dir}/adapter"
        )
    else:
        print(summary(history, run_dir))
    if tracker:
        print(f"MLflow run {tracker.run_id} ({tracker.run_name}) in {tracker.uri}")
