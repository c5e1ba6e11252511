"""A stochastic step for flow-matching models, with its log-probability: what D3PO and DDPO need of SD3/FLUX.

Flow matching (SD3.x, FLUX.1) samples by integrating the ODE dx = v(x, t) dt from t = 1 (noise) to t = 0
along the path x_t = (1 - t) x_0 + t * noise; diffusers' `FlowMatchEulerDiscreteScheduler.step` takes one
Euler step, x_{t'} = x_t + (t' - t) v, which is deterministic and so has no log-probability. Flow-GRPO (Liu et
al., arXiv 2505.05470, section 4.1, eqs. (8)-(9) and the discretisation after them) converts the ODE into an
SDE with the same marginal distributions at every t:

    dx = [v + sigma_t^2 / (2t) * (x + (1 - t) v)] dt + sigma_t dw,    sigma_t = a * sqrt(t / (1 - t)),

since the marginal score is -(x + (1 - t) v) / t on this path. One Euler-Maruyama step from t to t' < t (dt =
t' - t < 0) is the Gaussian

    x_{t'} ~ N(x + [v + sigma_t^2 / (2t) (x + (1 - t) v)] dt,  sigma_t^2 |dt|),

and its log-density is the action's log-probability. `noise_level` is a; as it goes to 0 the mean becomes
the scheduler's Euler step. Differences from the scheduler's own `step`:

1. Stochastic (the SDE above), returning the step's mean and standard deviation; `flow_step_with_logprob`
   adds log N(prev_sample; mean, std^2), averaged over the non-batch dimensions as rlft/families/ddim.py's
   DDIM step and Flow-GRPO do. At t = 1 sigma_t is infinite; as Flow-GRPO does, sigma_t there uses the
   next sigma of the schedule instead of 1.
2. `timestep` may be a tensor (B,): each sample may sit at a different step (D3PO's shuffled items); the
   scheduler's sigmas are gathered per sample, and no step index is kept between calls.
3. Noise comes from `generator` (or `noise`), never the global RNG; `prev_sample` may be given instead, to
   score a step already taken.
4. Dropped: `stochastic_sampling` (the scheduler's own re-noising sampler), per-token timesteps, the
   return_dict wrapper. The step stays in the sample's dtype (upstream upcasts it to float32); the
   log-probability is computed in float32 at least, as rlft/families/ddim.py's.
"""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor

from rlft.families.ddim import gaussian_log_prob


def step_sigmas(
    scheduler: FlowMatchEulerDiscreteScheduler, timestep: float | Tensor, sample: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(t, the next t, t for the noise level) per sample, each shaped to broadcast against `sample`.

    `timestep` is one of `scheduler.timesteps` (a float or a (B,) tensor of them), as the model is called
    with; the schedule's sigmas are those times divided by `num_train_timesteps`, ending at 0."""
    if scheduler.timesteps is None or scheduler.sigmas is None or scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping")
    timesteps = scheduler.timesteps.to(sample.device, torch.float64)
    t = torch.as_tensor(timestep, device=sample.device, dtype=torch.float64).reshape(-1)
    distance = (t[:, None] - timesteps[None, :]).abs()
    if (distance.min(dim=1).values > 1e-3).any():
        raise ValueError(f"timesteps {t.tolist()} are not all in the scheduler's {timesteps.tolist()}")
    index = distance.argmin(dim=1)
    index = index.expand(sample.shape[0]) if index.numel() == 1 else index
    sigmas = scheduler.sigmas.to(sample.device)
    shape = (-1, *([1] * (sample.ndim - 1)))
    sigma, sigma_next = sigmas[index], sigmas[index + 1]
    # At t = 1 the noise level sqrt(t / (1 - t)) is infinite: use the schedule's second sigma there.
    sigma_noise = torch.where(sigma >= 1, sigmas[1].expand_as(sigma), sigma)
    return tuple(s.to(sample.dtype).reshape(shape) for s in (sigma, sigma_next, sigma_noise))


def flow_step(
    scheduler: FlowMatchEulerDiscreteScheduler,
    velocity: Tensor,
    timestep: float | Tensor,
    sample: Tensor,
    *,
    noise_level: float,
    prev_sample: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the SDE from x_t = `sample` with the model's `velocity`; returns (prev_sample, mean, std).

    std is (B, 1, ..., 1); with `noise_level` 0 it is 0, prev_sample is the mean and the step is the
    scheduler's Euler step."""
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    sigma, sigma_next, sigma_noise = step_sigmas(scheduler, timestep, sample)
    dt = sigma_next - sigma  # < 0
    std_t = noise_level * (sigma_noise / (1 - sigma_noise)).sqrt()  # sigma_t of the SDE
    drift = velocity + std_t**2 / (2 * sigma) * (sample + (1 - sigma) * velocity)
    mean = sample + drift * dt
    std = std_t * (-dt).sqrt()
    if prev_sample is None:
        if noise is None and noise_level > 0:
            noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        prev_sample = mean + std * noise if noise_level > 0 else mean
    return prev_sample, mean, std


def flow_step_with_logprob(
    scheduler: FlowMatchEulerDiscreteScheduler,
    velocity: Tensor,
    timestep: float | Tensor,
    sample: Tensor,
    *,
    noise_level: float,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """A step of the SDE and log N(prev_sample; mean, std^2), averaged over non-batch dims: (B,)."""
    if noise_level <= 0:
        raise ValueError(
            f"noise_level must be > 0 for log-probabilities (the step is the deterministic ODE's at 0), "
            f"got {noise_level}"
        )
    prev_sample, mean, std = flow_step(
        scheduler,
        velocity,
        timestep,
        sample,
        noise_level=noise_level,
        prev_sample=prev_sample,
        generator=generator,
    )
    # The sample is data, not a function of the parameters: only the mean carries gradient.
    return prev_sample, gaussian_log_prob(prev_sample.detach(), mean, std)


def flow_predicted_x0(velocity: Tensor, sigma: Tensor, sample: Tensor) -> Tensor:
    """The x_0 the velocity predicts from x_t on the path x_t = (1 - t) x_0 + t * noise: x_t - t * v."""
    return sample - sigma * velocity


def flow_noised(x0: Tensor, noise: Tensor, sigma: Tensor | float) -> Tensor:
    """x_0 carried to time t along the path: (1 - t) x_0 + t * noise (DRaFT-LV's re-noising)."""
    return (1 - sigma) * x0 + sigma * noise
