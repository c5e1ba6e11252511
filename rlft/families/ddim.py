"""The DDIM step, patched to return the log-probability of the step it takes.

Follows `diffusers/schedulers/scheduling_ddim.py`, `DDIMScheduler.step`, diffusers 0.39.0
(equations (12) and (16) of Song et al., arXiv 2010.02502). Changes from upstream:

1. `timestep` may be a tensor of shape (B,): each sample in a batch may sit at a different step,
   which D3PO's shuffled (pair, timestep) batches need. Scheduler constants are gathered per sample.
2. The noise added when eta > 0 is passed in (`noise`) or drawn from `generator`, never from the
   global RNG; `prev_sample` may be given instead, to score a step that was already taken.
3. Returns the step's Gaussian mean and standard deviation, and `ddim_step_with_logprob` adds the
   log-density of `prev_sample` under them, averaged over the non-batch dimensions as ddpo-pytorch
   and the official D3PO code do. The step is computed in float32 at least (a bfloat16 model's last steps
   and log-ratios need it; upstream keeps the sample's dtype) and returns x_{t-1} in the sample's dtype.
4. Dropped: `use_clipped_model_output`, `thresholding` (refused), `variance_noise`, the
   `return_dict` wrapper. Kept: the three prediction types and `clip_sample`.
5. `predicted_x0` exposes the step's x_0 prediction alone (upstream's `pred_original_sample`), for ReFL.
"""

import math

import torch
from diffusers import DDIMScheduler
from torch import Tensor


def _per_sample(values: Tensor, index: Tensor, like: Tensor) -> Tensor:
    """values[index] broadcast against `like` (B, C, H, W)."""
    out = values.to(like.device)[index.to(like.device)].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def _x0_and_eps(
    scheduler: DDIMScheduler, eps: Tensor, alpha_t: Tensor, sample: Tensor
) -> tuple[Tensor, Tensor]:
    """(the predicted x_0, clipped as the scheduler clips; the implied noise) from the model output at x_t."""
    beta_t = 1 - alpha_t
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        x0 = (sample - beta_t.sqrt() * eps) / alpha_t.sqrt()
        eps_hat = eps
    elif kind == "sample":
        x0 = eps
        eps_hat = (sample - alpha_t.sqrt() * x0) / beta_t.sqrt()
    elif kind == "v_prediction":
        x0 = alpha_t.sqrt() * sample - beta_t.sqrt() * eps
        eps_hat = alpha_t.sqrt() * eps + beta_t.sqrt() * sample
    else:
        raise ValueError(f"prediction_type {kind!r} is not one of epsilon, sample, v_prediction")
    if scheduler.config.clip_sample:
        r = scheduler.config.clip_sample_range
        x0 = x0.clamp(-r, r)
    return x0, eps_hat


def _timesteps(timestep: int | Tensor, sample: Tensor) -> Tensor:
    """The timestep of each sample, (B,) long."""
    t = torch.as_tensor(timestep, device=sample.device).long().reshape(-1)
    return t.expand(sample.shape[0]) if t.numel() == 1 else t


def predicted_x0(scheduler: DDIMScheduler, eps: Tensor, timestep: int | Tensor, sample: Tensor) -> Tensor:
    """The x_0 that the model output `eps` predicts from x_t = `sample` (the "predicted x_0" of eq. (12)),
    clipped as the scheduler clips: what ReFL scores instead of finishing the sample."""
    alpha_t = _per_sample(scheduler.alphas_cumprod, _timesteps(timestep, sample), sample)
    return _x0_and_eps(scheduler, eps, alpha_t, sample)[0]


def ddim_step(
    scheduler: DDIMScheduler,
    eps: Tensor,
    timestep: int | Tensor,
    sample: Tensor,
    *,
    eta: float,
    prev_sample: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One DDIM step from x_t to x_{t-1}; returns (prev_sample in the sample's dtype, mean and std in float32
    at least).

    eps: the model output (B, C, H, W), interpreted by `scheduler.config.prediction_type`.
    With eta == 0 the step is deterministic and prev_sample == mean (in the sample's dtype).
    """
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping")
    if scheduler.config.thresholding:
        raise ValueError("scheduler.config.thresholding is not supported by ddim_step")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    # In float32 at least, back to the sample's dtype at the end: in bfloat16, 1 - alpha_t / alpha_prev
    # rounds to 0 or below over the last steps, and their log-probabilities to NaN.
    dtype, work = sample.dtype, torch.promote_types(sample.dtype, torch.float32)
    eps, sample = eps.to(work), sample.to(work)
    t = _timesteps(timestep, sample)
    step_size = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    t_prev = t - step_size

    alphas = scheduler.alphas_cumprod.to(sample.device)
    alpha_t = _per_sample(alphas, t, sample)
    alpha_prev = torch.where(
        t_prev >= 0, alphas[t_prev.clamp(min=0)], torch.as_tensor(scheduler.final_alpha_cumprod).to(alphas)
    )
    alpha_prev = alpha_prev.to(sample.dtype).reshape_as(alpha_t)
    beta_t, beta_prev = 1 - alpha_t, 1 - alpha_prev
    x0, eps_hat = _x0_and_eps(scheduler, eps, alpha_t, sample)

    # sigma_t of eq. (16); variance reaches 0 only at the final step when final_alpha_cumprod == 1.
    variance = (beta_prev / beta_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.clamp(min=0).sqrt()
    mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - std**2).clamp(min=0).sqrt() * eps_hat

    if prev_sample is None:
        if eta > 0:
            if noise is None:
                noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=dtype)
            prev_sample = (mean + std * noise).to(dtype)
        else:
            prev_sample = mean.to(dtype)
    return prev_sample, mean, std


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    eps: Tensor,
    timestep: int | Tensor,
    sample: Tensor,
    *,
    eta: float,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """A DDIM step and log N(prev_sample; mean, std^2), averaged over non-batch dims: (B,)."""
    if eta <= 0:
        raise ValueError(f"eta must be > 0 for log-probabilities (the step is deterministic at 0), got {eta}")
    prev_sample, mean, std = ddim_step(
        scheduler, eps, timestep, sample, eta=eta, prev_sample=prev_sample, generator=generator
    )
    # The sample is data, not a function of the parameters: only the mean carries gradient.
    return prev_sample, gaussian_log_prob(prev_sample.detach(), mean, std)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std^2) averaged over the non-batch dimensions, (B,), computed in float32 at least: in
    bfloat16 the log-density (about -1 per element) keeps 3 significant digits, too few for the log-ratios
    D3PO and DDPO take between the policy and the reference."""
    dtype = torch.promote_types(mean.dtype, torch.float32)
    x, mean, std = x.to(dtype), mean.to(dtype), std.to(dtype)
    log_prob = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
