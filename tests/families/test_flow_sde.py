"""The flow-matching SDE step: its log-probability, its limit (the scheduler's Euler step), its marginals."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from rlft.families.flow_sde import (
    flow_noised,
    flow_predicted_x0,
    flow_step,
    flow_step_with_logprob,
    step_sigmas,
)


def _scheduler(steps: int = 8, shift: float = 3.0) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    return scheduler


def _inputs(batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 6, 6, generator=generator), torch.randn(batch, 4, 6, 6, generator=generator)


@pytest.mark.parametrize("index", [0, 3, 7])
def test_the_log_probability_is_the_gaussian_density_of_the_step_taken(index):
    scheduler = _scheduler()
    sample, velocity = _inputs()
    t = scheduler.timesteps[index]
    generator = torch.Generator().manual_seed(1)
    prev, log_prob = flow_step_with_logprob(
        scheduler, velocity, t, sample, noise_level=0.7, generator=generator
    )
    _, mean, std = flow_step(scheduler, velocity, t, sample, noise_level=0.7, prev_sample=prev)
    expected = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(prev).mean(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob, expected)
    # The step's noise: sigma_t sqrt(|dt|) with sigma_t = a sqrt(t / (1 - t)), t = 1 using the next sigma.
    sigma, sigma_next = scheduler.sigmas[index], scheduler.sigmas[index + 1]
    noise_t = scheduler.sigmas[1] if index == 0 else sigma
    expected_std = 0.7 * (noise_t / (1 - noise_t)).sqrt() * (sigma - sigma_next).sqrt()
    torch.testing.assert_close(std.flatten(), expected_std.expand(3))


def test_with_no_noise_the_step_is_the_schedulers_euler_step_and_has_no_log_probability():
    scheduler = _scheduler()
    sample, velocity = _inputs()
    reference = _scheduler()
    for t in scheduler.timesteps:
        expected = reference.step(velocity, t, sample).prev_sample
        prev, mean, std = flow_step(scheduler, velocity, t, sample, noise_level=0.0)
        torch.testing.assert_close(prev, expected)
        assert torch.equal(prev, mean) and (std == 0).all()
        # Small noise levels approach it.
        near = flow_step(scheduler, velocity, t, sample, noise_level=1e-4, noise=torch.zeros_like(sample))[0]
        torch.testing.assert_close(near, expected, atol=1e-6, rtol=1e-5)
        sample = expected
    with pytest.raises(ValueError, match="noise_level must be > 0 for log-probabilities"):
        flow_step_with_logprob(scheduler, velocity, scheduler.timesteps[0], sample, noise_level=0.0)


def test_each_sample_may_sit_at_its_own_timestep():
    scheduler = _scheduler()
    sample, velocity = _inputs()
    timesteps = scheduler.timesteps[torch.tensor([0, 5, 7])]
    prev = _inputs(seed=3)[0]
    _, together = flow_step_with_logprob(
        scheduler, velocity, timesteps, sample, noise_level=0.5, prev_sample=prev
    )
    alone = [
        flow_step_with_logprob(
            scheduler, velocity[i : i + 1], t, sample[i : i + 1], noise_level=0.5, prev_sample=prev[i : i + 1]
        )[1]
        for i, t in enumerate(timesteps)
    ]
    torch.testing.assert_close(together, torch.cat(alone))
    with pytest.raises(ValueError, match="are not all in the scheduler's"):
        step_sigmas(scheduler, torch.tensor([123.0, 500.0, 999.0]), sample)


def test_the_log_probability_gives_gradients_to_the_velocity_only():
    scheduler = _scheduler()
    sample, velocity = _inputs()
    velocity.requires_grad_(True)
    prev, log_prob = flow_step_with_logprob(
        scheduler, velocity, scheduler.timesteps[2], sample, noise_level=0.7, generator=torch.Generator()
    )
    log_prob.sum().backward()
    assert velocity.grad.abs().sum() > 0


def gaussian_data_velocity(x: torch.Tensor, t: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """The exact velocity E[noise - x_0 | x_t] when x_0 ~ N(mean, std^2) and x_t = (1 - t) x_0 + t noise."""
    a = 1 - t
    variance = a**2 * std**2 + t**2
    centred = x - a * mean
    x0 = mean + a * std**2 / variance * centred
    noise = t / variance * centred
    return noise - x0


def test_the_sde_and_the_ode_carry_noise_to_the_same_data_distribution():
    """Flow-GRPO's claim that the SDE keeps the ODE's marginals, checked where the velocity is exact: data
    N(2, 0.5^2), 200 steps, 20,000 samples from the same noise; both end at the data's mean and spread."""
    scheduler = _scheduler(steps=200, shift=1.0)
    start = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    ends = {}
    for noise_level in (0.0, 0.7):
        x = start
        for t in scheduler.timesteps:
            sigma = step_sigmas(scheduler, t, x)[0]
            velocity = gaussian_data_velocity(x, sigma, mean=2.0, std=0.5)
            x = flow_step(scheduler, velocity, t, x, noise_level=noise_level, generator=generator)[0]
        ends[noise_level] = x
    for x in ends.values():
        assert abs(x.mean().item() - 2.0) < 0.02 and abs(x.std().item() - 0.5) < 0.02
    # The SDE really is stochastic: its samples are not the ODE's.
    assert (ends[0.7] - ends[0.0]).abs().mean() > 0.1


def test_the_path_helpers_invert_each_other():
    x0, noise = _inputs()
    sigma = torch.tensor(0.3)
    x_t = flow_noised(x0, noise, sigma)
    torch.testing.assert_close(flow_predicted_x0(noise - x0, sigma, x_t), x0)
