import torch

from rlft.algorithms.backend import adamw


def test_a_gpu_learner_runs_the_fused_adamw_kernel_which_takes_the_steps_of_the_cpus_loop():
    """On a GPU the learners' AdamW is torch's fused kernel: the same steps (weight decay included) as the
    per-parameter loop a CPU keeps, to rounding, and a state a resumed run loads. (Checked here with the
    fused kernel's CPU build; the choice of kernel follows the parameters' device.)"""
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(8, 4, generator=g), torch.randn(4, generator=g)]
    fused = [torch.nn.Parameter(p.clone()) for p in start]
    plain = [torch.nn.Parameter(p.clone()) for p in start]
    plain_opt = adamw(plain, lr=1e-2)
    assert not plain_opt.defaults["fused"]  # a CPU run's numbers stay those of torch's loop
    fused_opt = torch.optim.AdamW(fused, lr=1e-2, weight_decay=1e-4, fused=True)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in start]
        for params, opt in ((fused, fused_opt), (plain, plain_opt)):
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad.clone()
            opt.step()
    torch.testing.assert_close(fused, plain)
    assert (fused[0] - start[0]).abs().min() > 0
    resumed = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in fused], fused=True)
    resumed.load_state_dict(fused_opt.state_dict())
    torch.testing.assert_close(resumed.state_dict()["state"], fused_opt.state_dict()["state"])
