"""What an algorithm's epoch is written against: a backend that samples, scores, trains and evaluates (a
`Backend`), or, for a run on people's labels, one that only trains (a `Trainer`).

An algorithm (rlft/algorithms/d3po.py, rlft/algorithms/draft.py) writes its epoch once, as a function of its
config and a `Backend`; the single-process backend (rlft/local.py) and the Ray one
(rlft/distributed/ray_loop.py) run the same epoch with the same numbers. The learner side of an algorithm
(`make_learner`, `train`) runs wherever the weights live: in the one process, or in every Ray Train worker.
Nothing here imports Ray, MLflow or files.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

Log = Callable[[str], None]
# Images to show: a grid (N, 3, H, W) in [0, 1] and its prompts, made only when they are logged.
ShowFn = Callable[[], tuple[Tensor, list[str]]]
# One epoch's work, given its number: (the algorithm's own metrics, per-sample rewards (B,), the images
# to show); rewards and images are None for an epoch that samples nothing (training on people's labels).
EpochFn = Callable[[int], tuple[dict[str, float], Tensor | None, ShowFn | None]]
GradSync = Callable[[list[torch.nn.Parameter]], None]
# Scores the current policy on the fixed evaluation set: (rewards (N,) or (N, R), images (N, 3, H, W)).
EvalFn = Callable[[], tuple[Tensor, Tensor]]


class Trained(Protocol):
    """Where the trained weights live (this process, or Ray Train workers): what a checkpoint holds."""

    def state(self) -> dict:
        """{"weights": the trained weights, "optimizer": the optimizer's state dict}."""

    def load(self, state: dict) -> None: ...

    # What the next epoch samples with in a pipelined run ({name: tensor}; None: the current weights); the
    # checkpoint holds it as "sampling_weights", so a resumed run samples as an uninterrupted one.
    sampling_weights: dict[str, Tensor] | None

    def adapter_files(self) -> dict[str, bytes]: ...


@dataclass
class Sampled:
    """An epoch's samples (see rlft/epoch.py's `sample_chunk`), their rewards when scored, their images
    (fetched only when shown), the seconds each phase took (sampling: what the epoch waited for it) and
    how many epochs' updates the sampling weights lack (1 in a pipelined run after its first epoch)."""

    samples: dict[str, Tensor]
    rewards: Tensor | None
    images: Callable[[], Tensor]
    timing: dict[str, float]
    staleness: int = 0


class Trainer(Protocol):
    """Where the weights train: `train` gives the learner's metrics (averaged over workers), the rewards the
    learner computed itself (DRaFT-K finishes its samples while training) or None, and its timing.
    `progress` counts the work within an epoch (rlft/progress.py). A run on people's labels needs only
    this."""

    trained: Trained
    progress: Any

    def train(
        self, epoch: int, prompts: list[str], items: dict[str, Tensor]
    ) -> tuple[dict[str, float], Tensor | None, dict[str, float]]: ...


class Backend(Trainer, Protocol):
    """A `Trainer` that also samples, scores and evaluates: where a sampled run's epoch runs."""

    def sample(self, epoch: int, prompts: list[str], score: bool = True) -> Sampled:
        """The epoch's samples: from the weights `prefetch` saw if it was called for this epoch (or the
        checkpoint that recorded them), else from the current ones."""

    def prefetch(self, epoch: int, prompts: list[str]) -> None:
        """A pipelined run: `epoch` samples `prompts` with the weights the policy has now, started at once
        where samplers are free to overlap the training that follows (Ray), or recorded for later (one
        process). Called every epoch, also the last: a longer resumed run samples its next epoch as an
        uninterrupted one does."""

    def sample_images(self, chunk: Any) -> Tensor:
        """A chunk sampled to the end with the training settings, as images (for grids)."""

    def evaluate(self) -> tuple[Tensor, Tensor]: ...


class Learner(Protocol):
    """What applies an algorithm's updates where the weights live: the `Policy` it trains (the model with
    its adapter, rlft/diffusion/policy.py) and the optimizer a checkpoint saves with the weights."""

    policy: Any
    optimizer: torch.optim.Optimizer


# Builds a learner where the weights live: (the run's config, the pipeline, its Policy, the gradient sync of
# data-parallel workers or None).
MakeLearner = Callable[[Any, Any, Any, GradSync | None], Learner]


@dataclass
class EpochInputs:
    """What a learner's epoch may use beside its batches, made where the learner runs: the epoch's prompt
    conditioning (rlft/families/registry.py's `Cond`, one row per prompt), the unconditional prompt's, a
    generator for the learner's own noise (DRaFT's) and the prompts (DRaFT-K scores what it finishes)."""

    cond: Any
    uncond: Any
    generator: torch.Generator
    prompts: list[str]


# A learner's epoch over its batches: (metrics, the rewards it computed or None).
TrainFn = Callable[[Any, Iterable[dict[str, Tensor]], EpochInputs], tuple]
# The algorithm's own part of an epoch's printed line: its metrics, each at the digits where it moves.
EpochParts = Callable[[dict[str, float]], list[str]]


@dataclass(frozen=True)
class Algorithm:
    """One algorithm: its learner (built where the weights live), its epoch (written once) and how its
    metrics read on the epoch's line. Adding an algorithm is its module, its config, one line in
    rlft/algorithms/registry.py and a job file; the loop and the backends reach it only through the config's
    `algorithm` and the registry."""

    name: str
    make_learner: MakeLearner
    train: TrainFn
    epoch: Callable[[Any, Backend], EpochFn]  # (cfg, backend) -> one epoch
    epoch_parts: EpochParts


def pipeline_next(
    cfg, backend: Backend, epoch: int, sampled: Sampled, prompts_of_epoch: Callable[[int], list[str]]
) -> dict[str, float]:
    """A pipelined run (cfg.pipelined()) sends the next epoch's sampling off before this epoch trains, with
    the weights this epoch trains from; `prompts_of_epoch(epoch)` gives an epoch's prompts. Returns the
    epoch's `sample_staleness` metric ({} when not pipelined)."""
    if not cfg.pipelined():
        return {}
    backend.prefetch(epoch + 1, prompts_of_epoch(epoch + 1))
    return {"sample_staleness": float(sampled.staleness)}


def denoiser_at_sampled_steps(cfg, pipe):
    """The pipeline's `Denoiser` (rlft/families/registry.py) with its scheduler at the steps the items were
    sampled at: what D3PO's and DDPO's learners recompute each recorded step's log-probability with."""
    from rlft.families.registry import denoiser_for  # model code, only where the weights live

    denoiser = denoiser_for(pipe)
    denoiser.set_timesteps(cfg.num_steps, cfg.resolution)
    return denoiser


def adamw(params: list[torch.nn.Parameter], lr: float) -> torch.optim.AdamW:
    """The learners' optimizer: AdamW, on a GPU with torch's fused kernel (one kernel for all of a LoRA's
    small matrices). A CPU keeps torch's per-parameter loop: the fused kernel's steps agree with it only to
    rounding, and rounding alone moves one D3PO run's gain a lot (docs/learning.md), so CPU runs keep the
    numbers their recorded results were made with; there the optimizer is about 1 % of the update's time."""
    fused = all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-4, fused=fused or None)


def micro_batches(batch: dict[str, Tensor], size: int | None) -> list[tuple[dict[str, Tensor], float]]:
    """The batch cut along its first dimension into pieces of `size` items (the last may be smaller; None:
    the batch whole), each with its share of the batch's items: a loss that is a mean over items, scaled by
    its piece's share, adds up over the pieces to the whole batch's."""
    count = len(next(iter(batch.values())))
    size = size or count
    pieces = [{k: v[start : start + size] for k, v in batch.items()} for start in range(0, count, size)]
    return [(piece, len(next(iter(piece.values()))) / count) for piece in pieces]


def backward(loss: Tensor, share: float) -> None:
    """Add one micro-batch's gradient, its loss scaled by its share of the batch (a whole batch's, 1, is left
    as it is: its numbers are those of a step without micro-batches)."""
    (loss if share == 1 else loss * share).backward()


def apply_gradients(
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    grad_sync: GradSync | None,
    max_grad_norm: float,
) -> float:
    """The optimizer step on the gradients the batch's micro-batches accumulated (`backward`, after
    `optimizer.zero_grad`): average across workers (`grad_sync`), clip to `max_grad_norm`, step; the
    gradient's norm before clipping."""
    if grad_sync is not None:
        grad_sync(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return grad_norm.item()


def mean_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Each metric averaged over the steps (or passes) that logged it."""
    return {k: sum(h[k] for h in history) / len(history) for k in history[0]}
