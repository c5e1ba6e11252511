import pytest
import torch
from diffusers import DDIMScheduler

from rlft.families.ddim import ddim_step, ddim_step_with_logprob, gaussian_log_prob, predicted_x0


@pytest.fixture
def scheduler():
    s = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    s.set_timesteps(10)
    return s


def test_log_prob_is_the_gaussian_density_averaged_over_pixels(scheduler):
    g = torch.Generator().manual_seed(0)
    sample, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = scheduler.timesteps[4]
    prev, log_prob = ddim_step_with_logprob(scheduler, eps, t, sample, eta=1.0, generator=g)
    _, mean, std = ddim_step(scheduler, eps, t, sample, eta=1.0, prev_sample=prev)
    expected = torch.distributions.Normal(mean, std).log_prob(prev).mean(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob, expected)
    assert log_prob.shape == (3,)


def test_a_bfloat16_models_log_prob_is_computed_in_float32():
    """Policy and reference means a bfloat16 rounding apart must give different log-probabilities, to the
    digits of the same sum taken in float64 (in bfloat16 it keeps about 3 significant digits)."""
    g = torch.Generator().manual_seed(0)
    x, mean = (
        torch.randn(2, 16, 64, 64, generator=g).bfloat16(),
        torch.randn(2, 16, 64, 64, generator=g).bfloat16(),
    )
    nudged = mean + torch.full_like(mean, 2**-7)  # another bfloat16 mean, as a LoRA update makes
    std = torch.full((2, 1, 1, 1), 0.3).bfloat16()
    log_ratio = gaussian_log_prob(x, nudged, std) - gaussian_log_prob(x, mean, std)
    exact = (
        torch.distributions.Normal(nudged.double(), std.double()).log_prob(x.double())
        - torch.distributions.Normal(mean.double(), std.double()).log_prob(x.double())
    ).mean(dim=(1, 2, 3))
    assert log_ratio.dtype == torch.float32
    torch.testing.assert_close(log_ratio.double(), exact, rtol=1e-3, atol=1e-5)


def test_step_matches_diffusers_for_the_same_generator(scheduler):
    sample, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for eta in (0.0, 1.0):
        t = scheduler.timesteps[3]
        upstream = scheduler.step(
            eps, t, sample, eta=eta, generator=torch.Generator().manual_seed(5)
        ).prev_sample
        ours = ddim_step(scheduler, eps, t, sample, eta=eta, generator=torch.Generator().manual_seed(5))[0]
        torch.testing.assert_close(ours, upstream)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_predicted_x0_is_diffusers_pred_original_sample(kind):
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", prediction_type=kind, clip_sample=False)
    scheduler.set_timesteps(10)
    sample, output = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t in scheduler.timesteps[[0, 6, 9]]:
        upstream = scheduler.step(output, t, sample, eta=0.0).pred_original_sample
        torch.testing.assert_close(predicted_x0(scheduler, output, t, sample), upstream)


def test_per_sample_timesteps_equal_separate_steps(scheduler):
    sample, eps, prev = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    steps = scheduler.timesteps[[0, 5, 9]]  # includes the final step, whose alpha_prev is final_alpha_cumprod
    _, batched = ddim_step_with_logprob(scheduler, eps, steps, sample, eta=0.7, prev_sample=prev)
    for i, t in enumerate(steps):
        _, single = ddim_step_with_logprob(
            scheduler, eps[i : i + 1], t, sample[i : i + 1], eta=0.7, prev_sample=prev[i : i + 1]
        )
        torch.testing.assert_close(batched[i : i + 1], single)


def test_log_prob_needs_positive_eta(scheduler):
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_step_with_logprob(scheduler, x, scheduler.timesteps[0], x, eta=0.0)


def test_gradient_flows_through_the_mean_only(scheduler):
    eps = torch.randn(1, 4, 8, 8, requires_grad=True)
    prev = torch.randn(1, 4, 8, 8, requires_grad=True)
    _, log_prob = ddim_step_with_logprob(
        scheduler, eps, scheduler.timesteps[2], torch.randn(1, 4, 8, 8), eta=1.0, prev_sample=prev
    )
    log_prob.sum().backward()
    assert eps.grad is not None and eps.grad.abs().sum() > 0
    assert prev.grad is None


def test_a_bfloat16_sample_steps_in_float32_to_the_last_step(scheduler):
    """In bfloat16, 1 - alpha_t / alpha_prev rounds to 0 or below over the last steps: the step's noise
    level and log-probability were NaN there. Computed in float32, the step gives what float32 gives for
    the same (bfloat16-rounded) inputs, and x_{t-1} comes back in the sample's dtype."""
    scheduler.set_timesteps(20)  # the tiny model's default
    g = torch.Generator().manual_seed(0)
    sample, eps = (
        torch.randn(2, 4, 8, 8, generator=g).bfloat16(),
        torch.randn(2, 4, 8, 8, generator=g).bfloat16(),
    )
    last = scheduler.timesteps[-3:]  # where std is smallest
    steps = [ddim_step_with_logprob(scheduler, eps, t, sample, eta=1.0, generator=g) for t in last]
    assert all(torch.isfinite(log_prob).all() for _, log_prob in steps)
    for t, (prev, _) in zip(last, steps, strict=True):
        assert prev.dtype == torch.bfloat16
        _, mean, std = ddim_step(scheduler, eps, t, sample, eta=1.0, prev_sample=prev)
        _, mean32, std32 = ddim_step(scheduler, eps.float(), t, sample.float(), eta=1.0, prev_sample=prev)
        assert mean.dtype == torch.float32 and (std > 0).all()
        torch.testing.assert_close((mean, std), (mean32, std32))
