"""DRaFT (Clark et al., arXiv 2309.17400): backpropagate a differentiable reward through sampling.

- DRaFT-K: sample without gradient until K steps remain, then run the last K steps with gradient (each model
  call checkpointed), decode, score, backpropagate. The stop-gradient sits on the latent entering the last
  K steps. K = number of steps is full DRaFT.
- DRaFT-LV: from a no-grad final sample x_0, make n re-noised copies at the last step's noise level
  (x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise_i; for flow-matching models x_t = (1 - t) x_0 + t noise_i) and
  denoise each once with gradient; the loss averages the
  n rewards, a lower-variance estimate of the K = 1 gradient.
- ReFL-style (Xu et al., arXiv 2304.05977, ImageReward's ReFL): the sampler stops K steps before the end; the
  learner runs a random number of those steps without gradient, then one model call with gradient, and scores
  the x_0 that call predicts (`predicted_x0`) rather than finishing the sample. ReFL draws one of steps 30-39
  of 40; the default K is a quarter of the steps. Its training rewards are those of the predicted x_0.
  Left out: ReFL's ReLU on the ImageReward score and its alternating pretraining loss.
- AlignProp-style (Prabhudesai et al., arXiv 2310.03739): DRaFT-K with K drawn from 1..k at every optimizer
  step (AlignProp's randomised truncated backpropagation; its code truncates at 5-15 of 50 steps).
The losses live in rlft/algorithms/draft_losses.py; a sample whose reward is NaN drops out of them.

The epoch (`draft_epoch`) is written once against a `Backend` (rlft/algorithms/backend.py): sample (to where
the gradient starts), train, and for the grid sample a few prompts to the end.
"""

from __future__ import annotations

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
    mean_metrics,
)
from rlft.algorithms.draft_losses import RewardFn, denoise_steps, draft_k_loss, draft_lv_loss, refl_loss
from rlft.configs import DRaFTConfig
from rlft.epoch import Chunk, epoch_prompts, stream_seed
from rlft.rewards.registry import get_reward

# The model code only for type checks and in make_learner: a Ray driver runs the epoch, holds no model.
if TYPE_CHECKING:
    from rlft.diffusion.policy import Policy
    from rlft.families.registry import Cond, Denoiser

TRUNCATIONS = ("fixed", "random", "one")  # DRaFT-K; AlignProp's random K; ReFL's one random step


class DRaFTLearner:
    """Applies DRaFT-K (full DRaFT when K = all steps), DRaFT-LV, AlignProp-style (`truncation="random"`) or
    ReFL-style (`truncation="one"`) updates to a `Policy`.

    `descend` minimises the reward instead (a control run); the rewards it reports are still the reward's.

    `grad_sync`, when set, runs between backward and clipping (data-parallel workers average gradients).
    `micro_batch`: samples per forward/backward pass (None: the batch in one).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        policy: Policy,
        reward_fn: RewardFn,
        *,
        lr: float,
        num_steps: int,
        k: int,
        lv_copies: int = 0,
        truncation: str = "fixed",
        guidance_scale: float,
        eta: float = 0.0,
        max_grad_norm: float = 1.0,
        grad_sync: Callable[[list[torch.nn.Parameter]], None] | None = None,
        descend: bool = False,
        micro_batch: int | None = None,
    ):
        self.denoiser, self.policy = denoiser, policy
        self.reward_fn, self.descend = reward_fn, descend
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")
        self.num_steps, self.k, self.lv_copies, self.truncation = num_steps, k, lv_copies, truncation
        self.guidance_scale, self.eta, self.max_grad_norm = guidance_scale, eta, max_grad_norm
        self.grad_sync, self.micro_batch = grad_sync, micro_batch
        self.optimizer = adamw(policy.parameters(), lr)

    def step(
        self,
        latents: Tensor,
        cond: Cond,
        uncond: Cond,
        generator: torch.Generator,
        prompts: list[str] | None = None,
    ) -> tuple[dict[str, float], Tensor | None]:
        """One optimizer step from sampler output: latents (B, C, h, w) entering the last K steps (DRaFT-K,
        ReFL, AlignProp), or final ones (DRaFT-LV); cond has B rows. The gradient is accumulated over
        micro-batches of `micro_batch` samples (a DRaFT-LV pass holds lv_copies images of each); the noise and
        the truncation are drawn for the whole batch first, so the pieces add up to its step.

        Returns the metrics and, except for DRaFT-LV, the rewards of the samples it finished (B,) (ReFL's:
        of the x_0 it predicted); DRaFT-LV's samples were finished (and are scored) by the sampler.
        """
        timesteps = self.denoiser.set_timesteps(self.num_steps, self.denoiser.resolution_of(latents))
        noise, skip = self.draws(latents, generator)
        self.optimizer.zero_grad(set_to_none=True)
        count, size = len(latents), self.micro_batch or len(latents)
        total = count * max(self.lv_copies, 1)  # the batch's rewards
        rewards = []
        for piece in (slice(start, start + size) for start in range(0, count, size)):
            texts = None if prompts is None else prompts[piece]
            piece_noise = None if noise is None else noise[:, piece]
            args = (latents[piece], cond.take(piece), uncond, timesteps, piece_noise, skip, texts)
            loss, piece_rewards = self._loss(*args)
            # A piece's loss is the mean of its finite rewards: weighted by their share of the batch's
            # rewards, the pieces add up to the batch's loss (with no NaN reward; see below).
            backward(-loss if self.descend else loss, torch.isfinite(piece_rewards).sum().item() / total)
            rewards.append(piece_rewards)
        rewards = torch.cat(rewards, dim=-1)  # (B,), or DRaFT-LV's (n, B)
        finite, params = torch.isfinite(rewards), self.policy.parameters()
        kept = finite.sum().item()
        if 0 < kept < total:  # a NaN reward drops out of the mean: it runs over the kept rewards, not all
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(total / kept)
        grad_norm = apply_gradients(self.optimizer, params, self.grad_sync, self.max_grad_norm)
        train_reward = rewards[finite].mean().item()
        loss = train_reward if self.descend else -train_reward  # the loss is minus the mean reward
        metrics = {"loss": loss, "grad_norm": grad_norm, "train_reward": train_reward}
        return metrics, None if self.lv_copies else rewards.float().cpu()

    def draws(self, latents: Tensor, generator: torch.Generator) -> tuple[Tensor | None, int]:
        """What a step draws from `generator`, for the whole batch latents (B, C, h, w): the noise, DRaFT-LV's
        re-noising (n, B, C, h, w) or, when eta > 0, the K steps' (K, B, C, h, w) (else None); then the
        steps that run without gradient (`steps_without_grad`)."""
        count = self.lv_copies or (self.k if self.eta > 0 else 0)
        noise = None
        if count:
            shape = (count, *latents.shape)
            noise = torch.randn(shape, generator=generator, device=latents.device, dtype=latents.dtype)
        return noise, 0 if self.lv_copies else self.steps_without_grad(generator)

    def _loss(
        self,
        latents: Tensor,
        cond: Cond,
        uncond: Cond,
        timesteps: Tensor,
        noise: Tensor | None,
        skip: int,
        prompts: list[str] | None,
    ) -> tuple[Tensor, Tensor]:
        """A micro-batch's loss and its rewards: (b,), or DRaFT-LV's (n, b); noise as `draws` gives it."""
        common = dict(guidance_scale=self.guidance_scale, prompts=prompts)
        model, reward_fn = self.policy.model, self.reward_fn
        if self.lv_copies:
            args = (self.denoiser, model, reward_fn, latents, timesteps[-1], cond, uncond)
            return draft_lv_loss(*args, copies=self.lv_copies, noise=noise, **common)
        tail = timesteps[self.num_steps - self.k :]
        if skip:
            with torch.no_grad():
                early = None if noise is None else noise[:skip]
                args = (self.denoiser, model, latents, tail[:skip], cond, uncond)
                latents = denoise_steps(*args, guidance_scale=self.guidance_scale, eta=self.eta, noises=early)
        args = (self.denoiser, model, reward_fn, latents)
        if self.truncation == "one":
            return refl_loss(*args, tail[skip], cond, uncond, **common)
        rest = None if noise is None else noise[skip:]
        return draft_k_loss(*args, tail[skip:], cond, uncond, eta=self.eta, noises=rest, **common)

    def steps_without_grad(self, generator: torch.Generator) -> int:
        """How many of the last k steps run before the gradient starts: none for DRaFT-K; k - K for K drawn
        from 1..k (AlignProp); one of 0..k-1, the step that predicts x_0 being the next (ReFL). Drawn from
        `generator`, so both backends draw the same."""
        if self.truncation == "fixed":
            return 0
        return int(torch.randint(0, self.k, (1,), generator=generator, device=generator.device))

    def train_epoch(
        self,
        batches: Iterable[dict[str, Tensor]],
        cond: Cond,
        uncond: Cond,
        generator: torch.Generator,
        prompts: list[str] | None = None,
    ) -> tuple[dict[str, float], Tensor | None]:
        """One `step` per batch of items {latents, prompt}; (mean metrics, DRaFT-K's sample rewards)."""
        history, rewards = [], []
        for batch in batches:
            texts = None if prompts is None else [prompts[i] for i in batch["prompt"].tolist()]
            metrics, sample_rewards = self.step(
                batch["latents"], cond.take(batch["prompt"]), uncond, generator, texts
            )
            history.append(metrics)
            rewards.append(sample_rewards)
        return mean_metrics(history), None if rewards[0] is None else torch.cat(rewards)


def draft_items(samples: dict[str, Tensor]) -> dict[str, Tensor]:
    """One item per sample: the latent the gradient starts from, and its prompt."""
    return {"latents": samples["latents"][:, -1], "prompt": samples["group"]}


def show_chunk(cfg: DRaFTConfig, prompts: list[str], epoch: int) -> Chunk:
    """DRaFT's grid: fresh samples of the updated policy from a stream of their own (training draws none
    of it), since DRaFT-K's samples finish inside the learner."""
    return Chunk(0, prompts[:8], stream_seed(cfg.seed, epoch, "show"))


def make_learner(cfg: DRaFTConfig, pipe, policy: Policy, grad_sync: GradSync | None = None) -> DRaFTLearner:
    from rlft.families.registry import denoiser_for

    return DRaFTLearner(
        denoiser_for(pipe),
        policy,
        get_reward(cfg.reward, differentiable=True).fn,
        lr=cfg.lr,
        num_steps=cfg.num_steps,
        k=cfg.steps_with_grad,
        lv_copies=cfg.lv_copies if cfg.variant == "draft-lv" else 0,
        truncation={"refl": "one", "alignprop": "random"}.get(cfg.variant, "fixed"),
        guidance_scale=cfg.guidance_scale,
        eta=cfg.eta,
        max_grad_norm=cfg.max_grad_norm,
        grad_sync=grad_sync,
        descend=cfg.reverse_preferences,
        micro_batch=cfg.micro_batch,
    )


def train(learner: DRaFTLearner, batches, inputs: EpochInputs) -> tuple:
    """The learner's epoch: (metrics, the rewards of the samples DRaFT-K finished, or None for DRaFT-LV)."""
    return learner.train_epoch(batches, inputs.cond, inputs.uncond, inputs.generator, inputs.prompts)


def draft_epoch(cfg: DRaFTConfig, backend: Backend):
    """DRaFT's epoch: sample to where the gradient starts (DRaFT-LV: to the end, and score), then train."""
    lv = cfg.variant == "draft-lv"

    def one_epoch(epoch: int):
        prompts = epoch_prompts(cfg, epoch)
        sampled = backend.sample(epoch, prompts, score=lv)
        metrics, rewards, timing = backend.train(epoch, prompts, draft_items(sampled.samples))
        rewards = sampled.rewards if lv else rewards  # DRaFT-K finished its samples inside the learner

        def show():
            chunk = show_chunk(cfg, prompts, epoch)
            return backend.sample_images(chunk), chunk.prompts

        return metrics | sampled.timing | timing, rewards, show

    return one_epoch


def epoch_parts(m: dict[str, float]) -> list[str]:
    """DRaFT's part of the epoch line: its loss, minus the reward of what it finished, at the reward's own
    scale (four decimals, or scientific notation where they would hide it)."""
    loss = m["loss"]
    return [f"loss {loss:.4f}" if 1e-2 <= abs(loss) < 1e5 else f"loss {loss:.2e}"]


DRAFT = Algorithm("draft", make_learner, train, draft_epoch, epoch_parts)
