import torch

from rlft.algorithms.backend import adamw


def test_the_learners_fused_adamw_takes_the_steps_of_the_per_parameter_loop():
    """The learners' AdamW runs torch's fused kernel: the same steps (weight decay included) as the plain
    per-parameter loop, and a state a resumed run loads."""
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(8, 4, generator=g), torch.randn(4, generator=g)]
    fused = [torch.nn.Parameter(p.clone()) for p in start]
    plain = [torch.nn.Parameter(p.clone()) for p in start]
    fused_opt = adamw(fused, lr=1e-2)
    plain_opt = torch.optim.AdamW(plain, lr=1e-2, weight_decay=1e-4, foreach=False)
    assert fused_opt.defaults["fused"]
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in start]
        for params, opt in ((fused, fused_opt), (plain, plain_opt)):
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad.clone()
            opt.step()
    torch.testing.assert_close(fused, plain)
    assert (fused[0] - start[0]).abs().min() > 0
    resumed = adamw([torch.nn.Parameter(p.detach().clone()) for p in fused], lr=1e-2)
    resumed.load_state_dict(fused_opt.state_dict())
    torch.testing.assert_close(resumed.state_dict()["state"], fused_opt.state_dict()["state"])
