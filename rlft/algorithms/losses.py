"""Losses as pure functions of tensors: no config, Ray, MLflow or files."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def d3po_loss(
    logp_w: Tensor, ref_logp_w: Tensor, logp_l: Tensor, ref_logp_l: Tensor, *, beta: float, clip: float
) -> tuple[Tensor, dict[str, float]]:
    """Per-denoising-step DPO loss of D3PO (Yang et al., arXiv 2311.13231).

    Each argument is (N,): the log-probability of one denoising step of the preferred (`_w`) or
    rejected (`_l`) member of a pair under the policy and the frozen reference. The ratio
    r = exp(logp - ref_logp) is clamped to [1 - clip, 1 + clip] (as the official code does) so a
    step that already moved far gets no further gradient; then
    loss = -log sigmoid(beta * log r_w - beta * log r_l), averaged over the N steps.
    """
    low, high = math.log1p(-clip), math.log1p(clip)
    log_ratio_w, log_ratio_l = logp_w - ref_logp_w, logp_l - ref_logp_l
    margin = beta * (log_ratio_w.clamp(low, high) - log_ratio_l.clamp(low, high))
    loss = -F.logsigmoid(margin).mean()
    ratios = torch.cat([log_ratio_w.detach(), log_ratio_l.detach()])
    metrics = {
        "loss": loss.item(),
        # DPO's implicit reward margin, beta * (log r_w - log r_l) before clamping: > 0 once the policy
        # prefers the preferred steps more than the reference does. Its mean moves long before the loss.
        "reward_margin": (beta * (log_ratio_w - log_ratio_l)).detach().mean().item(),
        "log_ratio_w": log_ratio_w.detach().mean().item(),
        "log_ratio_l": log_ratio_l.detach().mean().item(),
        # Does the policy already give the preferred step more probability (relative to the reference)?
        "preference_accuracy": (log_ratio_w > log_ratio_l).float().mean().item(),
        "clamped_fraction": ((ratios < low) | (ratios > high)).float().mean().item(),
        "log_ratio_abs": ratios.abs().mean().item(),
    }
    return loss, metrics
