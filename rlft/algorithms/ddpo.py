"""DDPO: rewards to advantages, (sample, timestep) items, the learner applying PPO-clip updates, the epoch.

Black et al., arXiv 2305.13301 (DDPO_IS): each denoising step is an action whose log-probability ratio
between the policy being trained and the policy that sampled it is clipped as in PPO, weighted by the sample's
advantage (rlft/algorithms/advantages.py). The sampler's log-probabilities travel with the samples; the
learner recomputes the policy's with the same guided DDIM step D3PO uses. The epoch (`DDPOEpoch`) is written
once against a `Backend`, and its per-prompt statistics go into every checkpoint, so a resumed run computes
the advantages an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlft.algorithms.advantages import PerPromptStats, group_advantages
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
from rlft.algorithms.losses import ddpo_loss
from rlft.configs import DDPOConfig
from rlft.epoch import epoch_prompts, prompts_of, stream_generator

# The model code only for type checks and in make_learner: a Ray driver runs the epoch, holds no model.
if TYPE_CHECKING:
    from rlft.diffusion.policy import Policy
    from rlft.families.registry import Cond, Denoiser

NO_ITEMS = {"loss": float("nan"), "grad_norm": 0.0}


def ddpo_items(
    samples: dict[str, Tensor],
    advantages: Tensor,
    steps_trained: int,
    generator: torch.Generator,
    skip_final_steps: int = 0,
) -> dict[str, Tensor]:
    """One item per (sample, trained step): `steps_trained` of each sample's first S - `skip_final_steps`
    steps, chosen at random per sample (every one of them when it is that many), as ddpo-pytorch's
    `timestep_fraction` does.

    samples: latents (B, S+1, C, h, w), log_probs (B, S), timesteps (S,), group (B,); advantages (B,).
    Keys: latents (x_t) and next_latents (x_{t-1}) (N, C, h, w), timesteps, prompt, old_log_probs and
    advantages (N,). Item n is sample n // steps_trained."""
    count, steps = samples["log_probs"].shape
    steps -= skip_final_steps
    if steps_trained == steps:
        chosen = torch.arange(steps).repeat(count, 1)
    else:
        chosen = torch.stack(
            [torch.randperm(steps, generator=generator)[:steps_trained] for _ in range(count)]
        )
    sample = torch.arange(count).repeat_interleave(steps_trained)  # (N,)
    step = chosen.flatten()
    return {
        "latents": samples["latents"][sample, step],
        "next_latents": samples["latents"][sample, step + 1],
        "timesteps": samples["timesteps"][step],
        "prompt": samples["group"][sample],
        "old_log_probs": samples["log_probs"][sample, step],
        "advantages": advantages[sample],
    }


class DDPOLearner:
    """Applies DDPO updates to a `Policy`, one optimizer step per batch of (sample, timestep) items, its
    gradient accumulated over micro-batches of `micro_batch` items (None: the batch in one pass)."""

    def __init__(
        self,
        policy: Policy,
        denoiser: Denoiser,
        *,
        lr: float,
        clip_range: float,
        adv_clip_max: float,
        guidance_scale: float,
        eta: float,
        max_grad_norm: float = 1.0,
        grad_sync: GradSync | None = None,
        micro_batch: int | None = None,
    ):
        self.policy, self.denoiser = policy, denoiser
        self.clip_range, self.adv_clip_max = clip_range, adv_clip_max
        self.guidance_scale, self.eta = guidance_scale, eta
        self.max_grad_norm, self.grad_sync, self.micro_batch = max_grad_norm, grad_sync, micro_batch
        self.optimizer = adamw(policy.parameters(), lr)

    def _logp(self, piece: dict[str, Tensor], cond: Cond, uncond: Cond) -> Tensor:
        """The policy's log-probs (n,) of a micro-batch's steps."""
        latents, timesteps, denoiser = piece["latents"], piece["timesteps"], self.denoiser
        cond = cond.take(piece["prompt"])
        output = denoiser.guided(self.policy.model, latents, timesteps, cond, uncond, self.guidance_scale)
        prev = piece["next_latents"]
        return denoiser.step_with_logprob(output, timesteps, latents, eta=self.eta, prev_sample=prev)[1]

    def _loss(self, logp: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        clips = dict(clip_range=self.clip_range, adv_clip_max=self.adv_clip_max)
        return ddpo_loss(logp, batch["old_log_probs"], batch["advantages"], **clips)

    def step(self, batch: dict[str, Tensor], cond: Cond, uncond: Cond) -> dict[str, float]:
        """One optimizer step on a batch of items (see `ddpo_items`); cond has one row per prompt. The loss is
        a mean over items, so each micro-batch's counts by its share of them; the metrics are the batch's
        (the advantages were standardised over the epoch's samples before the items were made)."""
        self.optimizer.zero_grad(set_to_none=True)
        logps = []
        for piece, share in micro_batches(batch, self.micro_batch):
            logp = self._logp(piece, cond, uncond)
            backward(self._loss(logp, piece)[0], share)
            logps.append(logp.detach())
        params = self.policy.parameters()
        grad_norm = apply_gradients(self.optimizer, params, self.grad_sync, self.max_grad_norm)
        metrics = self._loss(torch.cat(logps), batch)[1]
        return metrics | {"grad_norm": grad_norm}


def make_learner(cfg: DDPOConfig, pipe, policy: Policy, grad_sync: GradSync | None = None) -> DDPOLearner:
    return DDPOLearner(
        policy,
        denoiser_at_sampled_steps(cfg, pipe),
        lr=cfg.lr,
        clip_range=cfg.clip_range,
        adv_clip_max=cfg.adv_clip_max,
        guidance_scale=cfg.guidance_scale,
        eta=cfg.eta,
        max_grad_norm=cfg.max_grad_norm,
        grad_sync=grad_sync,
        micro_batch=cfg.micro_batch,
    )


def train(learner: DDPOLearner, batches: Iterable[dict[str, Tensor]], inputs: EpochInputs) -> tuple:
    """The learner's pass over its batches: (mean metrics, None); DDPO draws no noise in training."""
    history = [learner.step(batch, inputs.cond, inputs.uncond) for batch in batches]
    if not history:
        raise ValueError("no training items")
    return mean_metrics(history), None


def finite_samples(samples: dict[str, Tensor], rewards: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """The samples whose reward is finite, and those rewards (a NaN reward trains nothing)."""
    kept = torch.isfinite(rewards)
    return {k: v if k == "timesteps" else v[kept] for k, v in samples.items()}, rewards[kept]


class DDPOEpoch:
    """DDPO's epoch: each drawn prompt sampled `samples_per_prompt` times (from independent noise, or sharing
    it with `shared_noise`), the rewards turned into advantages, `inner_epochs` passes of PPO-clip updates on
    the backend. Holds the per-prompt statistics across epochs; `state_dict`/`load_state_dict` carry them
    through checkpoints."""

    def __init__(self, cfg: DDPOConfig, backend: Backend):
        self.cfg, self.backend = cfg, backend
        self.stats = PerPromptStats(cfg.stat_buffer, cfg.stat_min_count)

    def advantages(self, prompts: list[str], rewards: Tensor) -> Tensor:
        if self.cfg.advantages == "group":
            return group_advantages(prompts, rewards)
        return self.stats.advantages(prompts, rewards)

    def sample_prompts(self, epoch: int) -> list[str]:
        """The prompt of each group the epoch samples: without `shared_noise` each sample is its own group."""
        prompts = epoch_prompts(self.cfg, epoch)
        if self.cfg.shared_noise:
            return prompts
        return [p for p in prompts for _ in range(self.cfg.samples_per_prompt)]

    def __call__(self, epoch: int):
        cfg = self.cfg
        prompts = self.sample_prompts(epoch)
        sampled = self.backend.sample(epoch, prompts)
        pipelined = pipeline_next(cfg, self.backend, epoch, sampled, self.sample_prompts)
        signed = -sampled.rewards if cfg.reverse_preferences else sampled.rewards  # the control descends
        samples, signed = finite_samples(sampled.samples, signed)
        advantages = self.advantages(prompts_of(prompts, samples["group"]), signed)
        generator = stream_generator(cfg.seed, epoch, "timesteps")
        items = ddpo_items(samples, advantages, cfg.steps_trained, generator, cfg.skip_final_steps)
        passes, timing = [], {}
        if len(items["prompt"]) >= cfg.train_workers:  # else every reward was NaN: nothing to train on
            for inner in range(cfg.inner_epochs):
                if inner:  # a new order for each further pass (the backend's own shuffle is the epoch's)
                    shuffle = stream_generator(cfg.seed, epoch, "shuffle", inner)
                    order = torch.randperm(len(items["prompt"]), generator=shuffle)
                    items = {k: v[order] for k, v in items.items()}
                metrics, _, timing = self.backend.train(epoch, prompts, items)
                passes.append(metrics)
        metrics = mean_metrics(passes) if passes else NO_ITEMS

        def show():  # one image per drawn prompt
            texts = prompts_of(prompts, sampled.samples["group"])
            return sampled.images()[:: cfg.samples_per_prompt], texts[:: cfg.samples_per_prompt]

        spread = advantages.std().item() if len(advantages) > 1 else 0.0
        trained = {"items": float(len(items["prompt"])), "advantage_std": spread}
        return metrics | trained | sampled.timing | timing | pipelined, sampled.rewards, show

    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state["stats"])


def epoch_parts(m: dict[str, float]) -> list[str]:
    """DDPO's part of the epoch line: its PPO loss is a mean of advantages (about 0) times ratios near 1,
    and its approximate KL to the sampling policy is tiny, so both in scientific notation; the share of
    clipped ratios to 0.1 %."""
    return [f"loss {m['loss']:+.2e}", f"kl {m['approx_kl']:.1e}", f"clipped {m['clip_fraction']:.1%}"]


DDPO = Algorithm("ddpo", make_learner, train, DDPOEpoch, epoch_parts)
