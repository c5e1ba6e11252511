"""D3PO: pairs from a reward's order, (pair, timestep) items, the learner that applies updates, and the epoch.

The learner is a plain class (no Ray): the single-process backend calls it directly, and a Ray Train worker
can hold one. Both members of every pair and both halves of classifier-free guidance go through one model
call per micro-batch (the whole batch unless `micro_batch` cuts it; the gradients add up to the whole
batch's); the reference is the same model with the adapter disabled. With `objective="noised"` the items
are Diffusion-DPO's instead (`noised_pair_items`) and a member's log-probability is replaced by minus its
denoising error (`D3POLearner._denoising_error`); the loss and everything around it are the same. Written
once for every model family against its `Denoiser` (rlft/diffusion/families.py). The epoch (`d3po_epoch`)
is written once against a `Backend` (rlft/algorithms/backend.py): sample and score, pair, train.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlft.algorithms.backend import (
    Algorithm,
    Backend,
    GradSync,
    adamw,
    apply_gradients,
    backward,
    mean_metrics,
    micro_batches,
    pipeline_next,
)
from rlft.algorithms.losses import d3po_loss
from rlft.configs import D3POConfig
from rlft.epoch import epoch_prompts, stream_generator

# The model code only for type checks and in make_learner: a Ray driver runs the epoch, holds no model.
if TYPE_CHECKING:
    from rlft.diffusion.families import Cond, Denoiser
    from rlft.diffusion.policy import Policy

NO_PAIRS = {"loss": float("nan"), "preference_accuracy": float("nan"), "grad_norm": 0.0}


def dominates(a: Tensor, b: Tensor) -> bool:
    """Whether rewards a (R,) are at least as good as b on every reward and better on one (Pareto)."""
    return bool((a >= b).all() and (a > b).any())


def pairs_from_rewards(
    rewards: Tensor, group: Tensor, best_worst: bool = False
) -> tuple[Tensor, Tensor, int]:
    """Every pair of samples in the same group where one is preferred, as (index_w, index_l, ties).

    rewards (B,) or (B, R) for R rewards; group (B,). With several rewards a sample is preferred only when it
    is at least as good on every reward and better on one, the rule of the official D3PO code (its
    `compare` in scripts/train_with_rm.py); with one reward that is the larger reward. A pair where neither
    is preferred (equal, or each better on a different reward) carries no preference and is counted in
    `ties`; a sample with a NaN on any reward takes part in no pair.

    `best_worst` keeps one pair per group instead, its best sample over its worst (one reward only; the first
    of equals): with groups of 4 or more, the pairs with the widest reward margins.
    """
    rewards = rewards[:, None] if rewards.ndim == 1 else rewards  # (B, R)
    finite = torch.isfinite(rewards).all(dim=1)
    if best_worst:
        return _best_over_worst(rewards, group, finite)
    index_w, index_l, ties = [], [], 0
    for g in group.unique():
        members = ((group == g) & finite).nonzero().flatten().tolist()
        for a, i in enumerate(members):
            for j in members[a + 1 :]:
                if dominates(rewards[i], rewards[j]):
                    index_w.append(i)
                    index_l.append(j)
                elif dominates(rewards[j], rewards[i]):
                    index_w.append(j)
                    index_l.append(i)
                else:
                    ties += 1
    return torch.tensor(index_w, dtype=torch.long), torch.tensor(index_l, dtype=torch.long), ties


def _best_over_worst(rewards: Tensor, group: Tensor, finite: Tensor) -> tuple[Tensor, Tensor, int]:
    if rewards.shape[1] != 1:
        raise ValueError("best-worst pairs need one reward; several rewards have no single best sample")
    index_w, index_l, ties = [], [], 0
    for g in group.unique():
        members = ((group == g) & finite).nonzero().flatten()
        if len(members) < 2:
            continue
        scores = rewards[members, 0]
        best, worst = members[scores.argmax()].item(), members[scores.argmin()].item()
        if rewards[best, 0] > rewards[worst, 0]:
            index_w.append(best)
            index_l.append(worst)
        else:
            ties += 1
    return torch.tensor(index_w, dtype=torch.long), torch.tensor(index_l, dtype=torch.long), ties


def pair_items(
    latents: Tensor, group: Tensor, timesteps: Tensor, index_w: Tensor, index_l: Tensor
) -> dict[str, Tensor]:
    """Flatten P pairs x S steps into P*S training items, one (pair, timestep) each.

    latents (B, S+1, C, h, w) as sampled, group (B,) each sample's prompt index, timesteps (S,).
    Keys: latents_w/_l (x_t) and next_latents_w/_l (x_{t-1}) (N, C, h, w), timesteps (N,), prompt (N,)
    (both members of a pair share it). Item n is pair n // S at step n % S.
    """
    device, steps = latents.device, timesteps.numel()
    pair = torch.arange(len(index_w), device=device).repeat_interleave(steps)  # (N,)
    step = torch.arange(steps, device=device).repeat(len(index_w))  # (N,)
    index_w, index_l = index_w.to(device), index_l.to(device)
    items = {"timesteps": timesteps.to(device)[step], "prompt": group.to(device)[index_w][pair]}
    for suffix, index in (("w", index_w), ("l", index_l)):
        sample = index[pair]
        items[f"latents_{suffix}"] = latents[sample, step]
        items[f"next_latents_{suffix}"] = latents[sample, step + 1]
    return items


def noised_pair_items(
    latents: Tensor,
    group: Tensor,
    timesteps: Tensor,
    index_w: Tensor,
    index_l: Tensor,
    draws: int,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """`draws` items per pair for the noised objective: the pair's final latents (x_0 of both members,
    latents_w/_l (N, C, h, w)), one of the sampling schedule's timesteps (N,) and one noise (N, C, h, w),
    both shared by the pair's members and drawn from `generator`; prompt (N,). Item n is pair n // draws."""
    pair = torch.arange(len(index_w)).repeat_interleave(draws)  # (N,)
    final = latents[:, -1].cpu()
    which = torch.randint(0, len(timesteps), (len(pair),), generator=generator)
    noise = torch.randn((len(pair), *final.shape[1:]), generator=generator, dtype=final.dtype)
    return {
        "timesteps": timesteps.cpu()[which],
        "prompt": group.cpu()[index_w][pair],
        "latents_w": final[index_w][pair],
        "latents_l": final[index_l][pair],
        "noise": noise,
    }


def d3po_items(
    samples: dict[str, Tensor],
    rewards: Tensor,
    reverse: bool = False,
    pairs: str = "all",
    skip_final_steps: int = 0,
    noised_draws: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """(pair, timestep) items from the preferences within each group (`pairs_from_rewards`); rewards (B,) or
    (B, R) for several rewards; a sample with a NaN reward takes no part. `reverse` swaps every preference
    (the control run of `--reverse-preferences`); `pairs` is D3POConfig.pairs ("all" or "best-worst");
    the last `skip_final_steps` denoising steps are not trained. With `noised_draws`, the items are the
    noised objective's (`noised_pair_items`, timesteps drawn from the steps trained).
    Metrics: pairs, ties, and on the first reward `gap_metrics`' (how much signal the pairs carry)."""
    signed = -rewards if reverse else rewards
    index_w, index_l, ties = pairs_from_rewards(signed, samples["group"], best_worst=pairs == "best-worst")
    trained = len(samples["timesteps"]) - skip_final_steps  # the first steps; x_t of each and its x_{t-1}
    if noised_draws:
        args = (samples["latents"], samples["group"], samples["timesteps"][:trained], index_w, index_l)
        items = noised_pair_items(*args, noised_draws, generator or torch.Generator())
    else:
        latents, timesteps = samples["latents"][:, : trained + 1], samples["timesteps"][:trained]
        items = pair_items(latents, samples["group"], timesteps, index_w, index_l)
    first = signed if signed.ndim == 1 else signed[:, 0]  # (B,): the first reward, in the trained direction
    return items, {"pairs": float(len(index_w)), "ties": float(ties)} | gap_metrics(first, index_w, index_l)


def gap_metrics(rewards: Tensor, index_w: Tensor, index_l: Tensor) -> dict[str, float]:
    """reward_gap, the mean margin by which the trained pairs' preferred members won, and near_tie_share,
    the share of pairs won by less than a quarter of the epoch's reward spread (standard deviation): pairs
    whose order a little noise in the reward could flip. rewards (B,), one reward."""
    if not len(index_w):
        return {"reward_gap": 0.0, "near_tie_share": 0.0}
    gaps = rewards[index_w] - rewards[index_l]
    spread = rewards[torch.isfinite(rewards)].std()
    return {"reward_gap": gaps.mean().item(), "near_tie_share": (gaps < 0.25 * spread).float().mean().item()}


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
        measured = history if every else history[:1]
        after = {k: mean_metrics(measured)[k] for k in ("margin_after", "accuracy_after")}
        before = {
            "margin_before": mean_metrics(measured)["reward_margin"],
            "accuracy_before": mean_metrics(measured)["preference_accuracy"],
        }
        for metrics in history:
            for k in after:
                metrics.pop(k, None)
        return mean_metrics(history) | before | after


def make_learner(cfg: D3POConfig, pipe, policy: Policy, grad_sync: GradSync | None = None) -> D3POLearner:
    from rlft.diffusion.families import denoiser_for

    denoiser = denoiser_for(pipe)
    denoiser.set_timesteps(cfg.num_steps, cfg.resolution)  # the steps the items were sampled at
    return D3POLearner(
        policy,
        denoiser,
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


def train(learner: D3POLearner, batches, cond: Cond, uncond: Cond, generator, prompts) -> tuple:
    """The learner's epoch on its batches: (metrics, None); D3PO draws no noise and scores nothing."""
    return learner.train_epoch(batches, cond, uncond), None


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


D3PO = Algorithm("d3po", make_learner, train, d3po_epoch)
