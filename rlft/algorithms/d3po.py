"""D3PO: the learner that applies updates, and the epoch (pairs and items: rlft/algorithms/pairs.py).

The learner is a plain class (no Ray): the single-process backend calls it directly, and a Ray Train worker
can hold one. Both members of every pair and both halves of classifier-free guidance go through one model
call per micro-batch (the whole batch unless `micro_batch` cuts it; the gradients add up to the whole
batch's); the reference is the same model with the adapter disabled. With `objective="noised"` the items
are Diffusion-DPO's instead (`noised_pair_items`) and a member's log-probability is replaced by minus its
denoising error (`D3POLearner._denoising_error`); the loss and everything around it are the same. Written
once for every model family against its `Denoiser` (rlft/families/registry.py). The epoch (`d3po_epoch`)
is written once against a `Backend` (rlft/algorithms/backend.py): sample and score, pair, train.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlft.algorithms.backend import (
    Algorithm,
    Backend,
    EpochInputs,
    GradSync,
    adamw,
    apply_gradients,
    backward,
    denoiser_at_sampled_steps,
    mean_metrics,
    micro_batches,
    pipeline_next,
)
from rlft.algorithms.losses import d3po_loss
from rlft.algorithms.pairs import d3po_items
from rlft.configs import D3POConfig
from rlft.epoch import epoch_prompts, stream_generator

# The model code only for type checks and in make_learner: a Ray driver runs the epoch, holds no model.
if TYPE_CHECKING:
    from rlft.diffusion.policy import Policy
    from rlft.families.registry import Cond, Denoiser

NO_PAIRS = {"loss": float("nan"), "preference_accuracy": float("nan"), "grad_norm": 0.0}


class D3POLearner:
    """Applies D3PO updates to a `Policy`, one optimizer step per batch of (pair, timestep) items, its
    gradient accumulated over micro-batches of `micro_batch` items (None: the batch in one pass).

    `grad_sync`, when set, runs between backward and clipping (data-parallel workers average gradients).
    """

    def __init__(
        self,
        policy: Policy,
        denoiser: Denoiser,
        *,
        lr: float,
        beta: float,
        clip: float | None,
        guidance_scale: float,
        eta: float,
        one_sided: bool = False,
        kl_coef: float = 0.0,
        max_grad_norm: float = 1.0,
        grad_sync: Callable[[list[torch.nn.Parameter]], None] | None = None,
        micro_batch: int | None = None,
        after_every_step: bool = False,
    ):
        self.policy, self.denoiser = policy, denoiser
        self.after_every_step = after_every_step
        self.guidance_scale, self.eta = guidance_scale, eta
        self.loss_settings = dict(beta=beta, clip=clip, one_sided=one_sided, kl_coef=kl_coef)
        self.max_grad_norm, self.grad_sync, self.micro_batch = max_grad_norm, grad_sync, micro_batch
        self.optimizer = adamw(policy.parameters(), lr)

    def _logp(self, model, batch: dict[str, Tensor], cond: Cond, uncond: Cond) -> Tensor:
        """log-probs of the w and l steps under `model`: (2N,), w first; for the noised objective's items
        (with "noise"), minus their denoising errors (`_denoising_error`)."""
        latents = torch.cat([batch["latents_w"], batch["latents_l"]])  # (2N, C, h, w)
        timesteps = torch.cat([batch["timesteps"], batch["timesteps"]])
        cond = cond.take(batch["prompt"]).repeat(2)  # a pair's members share their prompt
        if "noise" in batch:
            noise = torch.cat([batch["noise"], batch["noise"]])
            return -self._denoising_error(model, latents, noise, timesteps, cond, uncond)
        output = self.denoiser.guided(model, latents, timesteps, cond, uncond, self.guidance_scale)
        prev = torch.cat([batch["next_latents_w"], batch["next_latents_l"]])
        return self.denoiser.step_with_logprob(output, timesteps, latents, eta=self.eta, prev_sample=prev)[1]

    def _denoising_error(
        self, model, x0: Tensor, noise: Tensor, t: Tensor, cond: Cond, uncond: Cond
    ) -> Tensor:
        """How far `model` misses the noise of x0 noised to t: the mean squared error of the noise its
        predicted x_0 implies, (B,). Diffusion-DPO's log-likelihood stand-in (Wallace et al., arXiv
        2311.12908), written through `predicted_x0` and `noised` for every family: with
        x_t = a x_0 + b noise, the implied noise's error is (a / b) times the x_0 error."""
        noisy = self.denoiser.noised(x0, noise, t)
        output = self.denoiser.guided(model, noisy, t, cond, uncond, self.guidance_scale)
        missed = self.denoiser.predicted_x0(output, t, noisy) - x0
        a = self.denoiser.noised(torch.ones_like(x0), torch.zeros_like(x0), t)
        b = self.denoiser.noised(torch.zeros_like(x0), torch.ones_like(x0), t)
        return ((missed * a / b).float() ** 2).mean(dim=tuple(range(1, x0.ndim)))

    def _loss(self, piece: dict[str, Tensor], cond: Cond, uncond: Cond) -> tuple[Tensor, list[Tensor]]:
        """A micro-batch's loss and its log-probs [logp_w, ref_logp_w, logp_l, ref_logp_l], each (n,)."""
        with torch.no_grad(), self.policy.reference() as reference:
            ref_logp_w, ref_logp_l = self._logp(reference, piece, cond, uncond).chunk(2)
        logp_w, logp_l = self._logp(self.policy.model, piece, cond, uncond).chunk(2)
        logps = [logp_w, ref_logp_w, logp_l, ref_logp_l]
        return d3po_loss(*logps, **self.loss_settings)[0], logps

    def step(
        self, batch: dict[str, Tensor], cond: Cond, uncond: Cond, measure_after: bool = False
    ) -> dict[str, float]:
        """One optimizer step on a batch of items (see `pair_items`); cond has one row per prompt. The loss is
        a mean over items, so each micro-batch's counts by its share of them; the metrics are the batch's.
        `measure_after` adds `margin_after` and `accuracy_after`: the implicit reward margin and preference
        accuracy on the same items after the step (did the step move its own pairs the way they ask?), at
        the cost of one more forward pass of the policy."""
        self.optimizer.zero_grad(set_to_none=True)
        logps = []
        for piece, share in micro_batches(batch, self.micro_batch):
            loss, piece_logps = self._loss(piece, cond, uncond)
            backward(loss, share)
            logps.append([logp.detach() for logp in piece_logps])
        params = self.policy.parameters()
        grad_norm = apply_gradients(self.optimizer, params, self.grad_sync, self.max_grad_norm)
        whole = [torch.cat(column) for column in zip(*logps, strict=True)]  # 4 x (N,)
        metrics = d3po_loss(*whole, **self.loss_settings)[1] | {"grad_norm": grad_norm}
        return metrics | self._after_step(batch, cond, uncond, whole) if measure_after else metrics

    @torch.no_grad()
    def _after_step(self, batch: dict[str, Tensor], cond: Cond, uncond: Cond, before: list[Tensor]) -> dict:
        """The margin and accuracy on the batch under the updated policy (the reference's log-probs kept)."""
        after = [
            self._logp(self.policy.model, piece, cond, uncond).chunk(2)
            for piece, _ in micro_batches(batch, self.micro_batch)
        ]
        logp_w, logp_l = (torch.cat(column) for column in zip(*after, strict=True))
        metrics = d3po_loss(logp_w, before[1], logp_l, before[3], **self.loss_settings)[1]
        return {"margin_after": metrics["reward_margin"], "accuracy_after": metrics["preference_accuracy"]}

    def train_epoch(self, batches: Iterable[dict[str, Tensor]], cond: Cond, uncond: Cond) -> dict[str, float]:
        """One `step` per batch; the metrics averaged over the batches. The margin and accuracy after a step
        are measured on the epoch's first step (one more forward pass an epoch), with `margin_before` and
        `accuracy_before` its own before it; on every step with `after_every_step` (one more a step)."""
        every = self.after_every_step
        history = [
            self.step(batch, cond, uncond, measure_after=every or i == 0) for i, batch in enumerate(batches)
        ]
        if not history:
            raise ValueError("no training items: every pair tied on the reward")
        measured = mean_metrics(history if every else history[:1])
        step = {
            "margin_before": measured["reward_margin"],
            "margin_after": measured["margin_after"],
            "accuracy_before": measured["preference_accuracy"],
            "accuracy_after": measured["accuracy_after"],
        }
        return mean_metrics([{k: v for k, v in m.items() if k not in step} for m in history]) | step


def make_learner(cfg: D3POConfig, pipe, policy: Policy, grad_sync: GradSync | None = None) -> D3POLearner:
    return D3POLearner(
        policy,
        denoiser_at_sampled_steps(cfg, pipe),
        lr=cfg.lr,
        beta=cfg.dpo_beta,
        clip=None if cfg.objective == "noised" else cfg.clip,
        one_sided=cfg.one_sided_clip,
        kl_coef=cfg.kl_coef,
        guidance_scale=cfg.guidance_scale,
        eta=cfg.eta,
        max_grad_norm=cfg.max_grad_norm,
        grad_sync=grad_sync,
        micro_batch=cfg.micro_batch,
        after_every_step=cfg.margin_after_every_step,
    )


def train(learner: D3POLearner, batches, inputs: EpochInputs) -> tuple:
    """The learner's epoch on its batches: (metrics, None); D3PO draws no noise and scores nothing."""
    return learner.train_epoch(batches, inputs.cond, inputs.uncond), None


def d3po_epoch(cfg: D3POConfig, backend: Backend):
    """D3PO's epoch: groups sharing x_T, pairs by the reward's order, per-step DPO on the backend."""

    def one_epoch(epoch: int):
        prompts = epoch_prompts(cfg, epoch)
        sampled = backend.sample(epoch, prompts)
        pipelined = pipeline_next(cfg, backend, epoch, sampled, lambda e: epoch_prompts(cfg, e))
        items, pairing = d3po_items(
            sampled.samples,
            sampled.rewards,
            reverse=cfg.reverse_preferences,
            pairs=cfg.pairs,
            skip_final_steps=cfg.skip_final_steps,
            noised_draws=cfg.noised_draws if cfg.objective == "noised" else 0,
            generator=stream_generator(cfg.seed, epoch, "noised"),
        )
        if len(items["prompt"]) >= cfg.train_workers:
            metrics, _, timing = backend.train(epoch, prompts, items)
        else:  # every pair tied: nothing to learn from this epoch
            metrics, timing = NO_PAIRS, {}

        def show():
            return sampled.images()[:: cfg.group_size], prompts  # one image per group

        return metrics | pairing | sampled.timing | timing | pipelined, sampled.rewards, show

    return one_epoch


def epoch_parts(m: dict[str, float]) -> list[str]:
    """D3PO's part of the epoch line. Its loss is log 2 to four decimals even in a run whose evaluation reward
    rises many standard errors: its margin, beta times a difference of small per-step log-ratios (policy over
    reference), is about 1e-4. So the loss is shown as its distance from log 2, the implicit reward margin and
    the mean log-ratios of the preferred (w) and rejected (l) steps in scientific notation, the accuracy to
    0.1 %; then the margin and accuracy a step moved its own items by, the clamped share and the pairs."""
    parts = []
    if "reward_margin" in m:
        parts += [
            f"loss log2{m['loss'] - math.log(2):+.1e}",
            f"margin {m['reward_margin']:+.1e}",
            f"acc {m['preference_accuracy']:.3f}",
            f"log-ratio w {m['log_ratio_w']:+.1e} l {m['log_ratio_l']:+.1e}",
        ]
        if "margin_after" in m:  # did a step move its own pairs the way they ask?
            parts.append(
                f"step: margin {m['margin_before']:+.1e} -> {m['margin_after']:+.1e}, "
                f"acc {m['accuracy_before']:.3f} -> {m['accuracy_after']:.3f}"
            )
        if m.get("clamped_fraction"):  # steps past the clip get no gradient
            parts.append(f"clamped {m['clamped_fraction']:.1%}")
    else:
        parts.append("nothing trained")  # every pair tied
    if "pairs" in m:
        compared = m["pairs"] + m["ties"]
        parts.append(f"pairs {m['pairs']:.0f} ({m['pairs'] / max(compared, 1):.0%} of compared)")
    return parts


D3PO = Algorithm("d3po", make_learner, train, d3po_epoch, epoch_parts)
