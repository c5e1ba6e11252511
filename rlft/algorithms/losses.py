"""Losses as pure functions of tensors: no config, Ray, MLflow or files."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def d3po_loss(
    logp_w: Tensor,
    ref_logp_w: Tensor,
    logp_l: Tensor,
    ref_logp_l: Tensor,
    *,
    beta: float,
    clip: float | None,
    one_sided: bool = False,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Per-denoising-step DPO loss of D3PO (Yang et al., arXiv 2311.13231).

    Each argument is (N,): the log-probability of one denoising step of the preferred (`_w`) or
    rejected (`_l`) member of a pair under the policy and the frozen reference. The ratio
    r = exp(logp - ref_logp) is clamped to [1 - clip, 1 + clip] (as the official code does) so a
    step that already moved far gets no further gradient; then
    loss = -log sigmoid(beta * log r_w - beta * log r_l), averaged over the N steps.

    `one_sided` clamps as PPO clips, only where a step has already moved the way the preference asks (r_w
    above 1 + clip, r_l below 1 - clip): a step that moved the wrong way keeps its gradient, which the
    two-sided clamp takes away. `kl_coef` adds kl_coef * mean(log r^2 / 2) over both members' steps, the
    squared-log-ratio ("k2") estimate of the KL divergence to the reference: a pull back towards the
    reference that grows with the distance, where the clamp gives none. `clip` None clamps nothing.
    """
    low, high = (-math.inf, math.inf) if clip is None else (math.log1p(-clip), math.log1p(clip))
    log_ratio_w, log_ratio_l = logp_w - ref_logp_w, logp_l - ref_logp_l
    if one_sided:
        kept_w, kept_l = log_ratio_w.clamp(max=high), log_ratio_l.clamp(min=low)
    else:
        kept_w, kept_l = log_ratio_w.clamp(low, high), log_ratio_l.clamp(low, high)
    margin = beta * (kept_w - kept_l)
    ratios = torch.cat([log_ratio_w, log_ratio_l])
    kl = 0.5 * (ratios**2).mean()
    loss = -F.logsigmoid(margin).mean()
    if kl_coef:  # only when asked: the default's arithmetic is the paper's loss alone
        loss = loss + kl_coef * kl
    ratios = ratios.detach()
    clamped = torch.cat([kept_w != log_ratio_w, kept_l != log_ratio_l])
    metrics = {
        "loss": loss.item(),
        # DPO's implicit reward margin, beta * (log r_w - log r_l) before clamping: > 0 once the policy
        # prefers the preferred steps more than the reference does. Its mean moves long before the loss.
        "reward_margin": (beta * (log_ratio_w - log_ratio_l)).detach().mean().item(),
        "log_ratio_w": log_ratio_w.detach().mean().item(),
        "log_ratio_l": log_ratio_l.detach().mean().item(),
        # Does the policy already give the preferred step more probability (relative to the reference)?
        "preference_accuracy": (log_ratio_w > log_ratio_l).float().mean().item(),
        "clamped_fraction": clamped.float().mean().item(),
        "log_ratio_abs": ratios.abs().mean().item(),
        "kl": kl.item(),
    }
    return loss, metrics


def ddpo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, *, clip_range: float, adv_clip_max: float
) -> tuple[Tensor, dict[str, float]]:
    """DDPO's PPO-clip loss on denoising steps (Black et al., arXiv 2305.13301, DDPO_IS with clipping).

    Each argument is (N,): one denoising step's log-probability under the policy being trained (`logp`) and
    under the policy that sampled it (`old_logp`), and the sample's advantage. Advantages are clamped to
    [-adv_clip_max, adv_clip_max]; with r = exp(logp - old_logp),
    loss = mean(max(-A * r, -A * clamp(r, 1 - clip_range, 1 + clip_range))),
    so a step whose ratio already moved past the clip range in the advantage's direction gets no gradient.
    """
    advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    log_ratio = (logp - old_logp).detach()
    metrics = {
        "loss": loss.item(),
        # PPO's diagnostics, as ddpo-pytorch logs them: how far the policy moved from the sampling policy.
        "approx_kl": 0.5 * (log_ratio**2).mean().item(),
        "clip_fraction": ((ratio.detach() - 1).abs() > clip_range).float().mean().item(),
        "advantage_abs": advantages.abs().mean().item(),
    }
    return loss, metrics
