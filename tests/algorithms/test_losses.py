import math

import pytest
import torch

from rlft.algorithms.losses import d3po_loss, ddpo_loss


def test_d3po_loss_by_hand():
    # Pair 1: log r_w = -1.00 - (-1.05) = 0.05 (inside [log 0.9, log 1.1] = [-0.10536, 0.09531]);
    #         log r_l = -1.00 - (-0.80) = -0.20, clamped to log 0.9 = -0.10536.
    #         margin = 0.1 * (0.05 + 0.10536) = 0.015536; loss = log(1 + exp(-0.015536)) = 0.685409.
    # Pair 2: log r_w = 0.30 -> clamped to log 1.1 = 0.09531; log r_l = 0.02.
    #         margin = 0.1 * (0.09531 - 0.02) = 0.007531; loss = log(1 + exp(-0.007531)) = 0.689389.
    logp_w, ref_w = torch.tensor([-1.00, 0.10]), torch.tensor([-1.05, -0.20])
    logp_l, ref_l = torch.tensor([-1.00, 0.52]), torch.tensor([-0.80, 0.50])
    loss, metrics = d3po_loss(logp_w, ref_w, logp_l, ref_l, beta=0.1, clip=0.1)
    assert loss.item() == pytest.approx((0.685409 + 0.689389) / 2, abs=1e-6)
    assert metrics["preference_accuracy"] == 1.0  # 0.05 > -0.20 and 0.30 > 0.02
    assert metrics["clamped_fraction"] == 0.5  # -0.20 and 0.30 of the four ratios
    # The implicit reward margin is taken before clamping: 0.1 * ((0.05 + 0.20) + (0.30 - 0.02)) / 2.
    assert metrics["reward_margin"] == pytest.approx(0.1 * (0.25 + 0.28) / 2, abs=1e-6)
    assert metrics["log_ratio_w"] == pytest.approx((0.05 + 0.30) / 2, abs=1e-6)
    assert metrics["log_ratio_l"] == pytest.approx((-0.20 + 0.02) / 2, abs=1e-6)


def test_equal_policy_and_reference_give_log_two():
    x = torch.randn(5)
    loss, metrics = d3po_loss(x, x, x, x, beta=0.1, clip=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert metrics["preference_accuracy"] == 0.0


def test_clamped_ratios_give_no_gradient():
    logp_w = torch.tensor([1.0], requires_grad=True)  # log r_w = 1 >> log 1.1
    logp_l = torch.tensor([0.0], requires_grad=True)  # log r_l = 0, inside
    loss, _ = d3po_loss(logp_w, torch.zeros(1), logp_l, torch.zeros(1), beta=1.0, clip=0.1)
    loss.backward()
    assert logp_w.grad.item() == 0.0
    assert logp_l.grad.item() > 0  # lowering the rejected step's probability lowers the loss


def test_the_one_sided_clamp_keeps_the_gradient_of_a_step_that_moved_the_wrong_way():
    # log r_w = -0.5 (the preferred step lost probability), log r_l = +0.5 (the rejected one gained): the
    # two-sided clamp stops both gradients, the one-sided one neither; past the clip the right way, both stop.
    for log_r_w, log_r_l, two_sided, one_sided in ((-0.5, 0.5, 0.0, 1.0), (0.5, -0.5, 0.0, 0.0)):
        grads = []
        for one in (False, True):
            logp_w = torch.tensor([log_r_w], requires_grad=True)
            logp_l = torch.tensor([log_r_l], requires_grad=True)
            d3po_loss(logp_w, torch.zeros(1), logp_l, torch.zeros(1), beta=1.0, clip=0.1, one_sided=one)[
                0
            ].backward()
            grads.append((logp_w.grad.item() != 0, logp_l.grad.item() != 0))
        assert grads[0] == (two_sided, two_sided)
        assert grads[1] == (one_sided, one_sided)
    # The loss by hand, one-sided: margin = 1.0 * (-0.5 - 0.5) = -1; loss = log(1 + e) = 1.313262.
    loss, metrics = d3po_loss(
        torch.tensor([-0.5]),
        torch.zeros(1),
        torch.tensor([0.5]),
        torch.zeros(1),
        beta=1.0,
        clip=0.1,
        one_sided=True,
    )
    assert loss.item() == pytest.approx(1.313262, abs=1e-6)
    assert metrics["clamped_fraction"] == 0.0


def test_the_kl_term_is_half_the_mean_squared_log_ratio_and_pulls_towards_the_reference():
    logp_w = torch.tensor([0.2, -0.1], requires_grad=True)  # log r_w = 0.2, -0.1
    logp_l = torch.tensor([0.3, 0.0], requires_grad=True)  # log r_l = 0.3, 0.0
    zero = torch.zeros(2)
    base, _ = d3po_loss(logp_w, zero, logp_l, zero, beta=0.1, clip=0.1)
    loss, metrics = d3po_loss(logp_w, zero, logp_l, zero, beta=0.1, clip=0.1, kl_coef=2.0)
    kl = (0.04 + 0.01 + 0.09 + 0.0) / 4 / 2  # mean of log r^2 / 2 over the four steps: 0.0175
    assert metrics["kl"] == pytest.approx(kl)
    assert loss.item() == pytest.approx(base.item() + 2.0 * kl, abs=1e-6)
    loss.backward()
    # log r_l = 0.3 is clamped (no DPO gradient): the KL term alone, 2.0 * 0.3 / 4, pushes it down.
    assert logp_l.grad[0].item() == pytest.approx(2.0 * 0.3 / 4)


def test_gradient_raises_preferred_and_lowers_rejected():
    logp_w = torch.zeros(3, requires_grad=True)
    logp_l = torch.zeros(3, requires_grad=True)
    loss, _ = d3po_loss(logp_w, torch.zeros(3), logp_l, torch.zeros(3), beta=0.1, clip=0.1)
    loss.backward()
    # d loss / d logp_w = -beta * sigmoid(0) / N = -0.1 * 0.5 / 3
    torch.testing.assert_close(logp_w.grad, torch.full((3,), -0.1 * 0.5 / 3))
    torch.testing.assert_close(logp_l.grad, torch.full((3,), 0.1 * 0.5 / 3))


def test_ddpo_loss_by_hand_clips_ratios_that_moved_past_the_range_in_the_advantages_direction():
    logp = torch.tensor([0.0, 0.1, -0.1], requires_grad=True)
    old = torch.zeros(3)
    advantages = torch.tensor([1.0, 1.0, -2.0])
    loss, metrics = ddpo_loss(logp, old, advantages, clip_range=0.05, adv_clip_max=5.0)
    # ratios 1, e^0.1, e^-0.1: max(-A r, -A clamp(r, 0.95, 1.05)) = -1, -1.05 (clipped), 1.9 (clipped)
    assert loss.item() == pytest.approx((-1 - 1.05 + 1.9) / 3, abs=1e-6)
    loss.backward()
    assert logp.grad.tolist() == pytest.approx([-1 / 3, 0.0, 0.0], abs=1e-6)  # only the unclipped step
    assert metrics["clip_fraction"] == pytest.approx(2 / 3)
    assert metrics["approx_kl"] == pytest.approx(0.5 * (0.01 + 0.01) / 3, rel=1e-5)


def test_ddpo_loss_clamps_advantages():
    logp = torch.zeros(2, requires_grad=True)
    loss, metrics = ddpo_loss(
        logp, torch.zeros(2), torch.tensor([10.0, -1.0]), clip_range=0.1, adv_clip_max=5.0
    )
    assert loss.item() == pytest.approx((-5.0 + 1.0) / 2)
    assert metrics["advantage_abs"] == pytest.approx(3.0)
