"""How much signal D3PO's gradient carries at the start of training, and which denoising steps it comes from.

    python benchmarks/science/d3po_gradients.py --groups 64 --seeds 0 1 2

For each reward and seed: the base policy samples `--groups` groups as a D3PO epoch does (one prompt and one
initial noise per group), pairs them best over worst, and D3PO's loss gradient (policy = reference, so no
ratio is clamped) is taken on two disjoint halves of the pairs. Printed:
- `agreement`: the cosine between the two halves' gradients. Independent halves agree only as far as the
  gradient is signal; pure noise gives about 0, whatever the learning rate or optimizer.
- `agreement, steps < S-k`: the same with the last k denoising steps left out.
- `agreement, noised (Diffusion-DPO)`: the same for a loss on the pairs' final latents, both members noised
  to one random timestep with one noise (`noised_gradient`), 4 draws per pair.
- `norm share of step s`: each step's share of the squared norm of the whole gradient.
"""

import argparse

import torch
from torch import Tensor

from rlft.algorithms.backend import backward, micro_batches
from rlft.algorithms.d3po import make_learner
from rlft.algorithms.pairs import d3po_items, pairs_from_rewards
from rlft.algorithms.registry import algorithm_of
from rlft.configs import D3POConfig
from rlft.diffusion.policy import build_policy
from rlft.diffusion.sampling import encode_prompts
from rlft.epoch import epoch_prompts
from rlft.families.registry import denoiser_for
from rlft.local import LocalBackend


def take(items: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    return {k: v[keep] for k, v in items.items()}


def gradient(learner, items: dict[str, Tensor], cond, uncond) -> Tensor:
    """D3PO's loss gradient on the items, flattened over the trained parameters."""
    learner.optimizer.zero_grad(set_to_none=True)
    for piece, share in micro_batches(items, 64):  # the mean over all items, 64 at a time
        loss, _ = learner._loss(piece, cond, uncond)
        backward(loss, share)
    return torch.cat([p.grad.flatten() for p in learner.policy.parameters()])


def noised_gradient(learner, pipe, x0_w, x0_l, cond, draws: int, generator) -> Tensor:
    """The gradient, at policy = reference, of a Diffusion-DPO-style loss (Wallace et al., arXiv
    2311.12908) on the same pairs' final latents: both members noised to one timestep with one noise, the
    preferred member's denoising error minus the rejected one's, averaged over `draws` draws per pair."""
    denoiser = denoiser_for(pipe)
    learner.optimizer.zero_grad(set_to_none=True)
    for _ in range(draws):
        t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (len(x0_w),), generator=generator)
        noise = torch.randn(x0_w.shape, generator=generator)
        errors = []
        for x0 in (x0_w, x0_l):
            noised = pipe.scheduler.add_noise(x0, noise, t)
            predicted = denoiser.call(learner.policy.model, noised, t, cond)
            errors.append(((predicted - noise) ** 2).mean())
        ((errors[0] - errors[1]) / draws).backward()
    return torch.cat([p.grad.flatten() for p in learner.policy.parameters()])


def cosine(a: Tensor, b: Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def measure(reward: str, seed: int, groups: int, skip: int) -> dict[str, float]:
    cfg = D3POConfig(reward=reward, seed=seed, pairs_per_epoch=groups, ray=False, track=False)
    pipe, policy = build_policy(cfg)
    learner = make_learner(cfg, pipe, policy)
    backend = LocalBackend(cfg, pipe, learner, algorithm_of(cfg).train)
    prompts = epoch_prompts(cfg, 0)
    sampled = backend.sample(0, prompts)
    items, pairing = d3po_items(sampled.samples, sampled.rewards, pairs=cfg.pairs)
    cond, uncond = encode_prompts(pipe, prompts)
    steps = cfg.num_steps
    pair = torch.arange(len(items["prompt"])) // steps
    step = torch.arange(len(items["prompt"])) % steps
    half = pair % 2 == 0
    result = {"pairs": pairing["pairs"], "reward gap": pairing["reward_gap"]}
    result["agreement"] = cosine(
        gradient(learner, take(items, half), cond, uncond),
        gradient(learner, take(items, ~half), cond, uncond),
    )
    early = step < steps - skip
    result[f"agreement, steps < {steps - skip}"] = cosine(
        gradient(learner, take(items, half & early), cond, uncond),
        gradient(learner, take(items, ~half & early), cond, uncond),
    )
    index_w, index_l, _ = pairs_from_rewards(sampled.rewards, sampled.samples["group"], best_worst=True)
    final = sampled.samples["latents"][:, -1]
    pair_cond = cond.take(sampled.samples["group"][index_w])
    generator = torch.Generator().manual_seed(seed)
    halves = [torch.arange(len(index_w)) % 2 == h for h in (0, 1)]
    noised = [
        noised_gradient(
            learner,
            pipe,
            final[index_w[h]],
            final[index_l[h]],
            pair_cond.take(h.nonzero().flatten()),
            4,
            generator,
        )
        for h in halves
    ]
    result["agreement, noised (Diffusion-DPO)"] = cosine(*noised)
    whole = gradient(learner, items, cond, uncond).norm() ** 2
    for s in range(steps):
        result[f"norm share of step {s}"] = (
            gradient(learner, take(items, step == s), cond, uncond).norm() ** 2 / whole
        ).item() / steps**2  # each step's gradient is a mean over its own items: scale to the whole's
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reward", nargs="+", default=["color-alignment-soft", "jpeg-compressibility"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--skip", type=int, default=2, help="final steps left out of the second agreement")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [
        (reward, seed, measure(reward, seed, args.groups, args.skip))
        for reward in args.reward
        for seed in args.seeds
    ]
    keys = list(rows[0][2])
    print("| reward | seed | " + " | ".join(keys) + " |")
    print("|" + " --- |" * (len(keys) + 2))
    for reward, seed, result in rows:
        cells = [f"{result[k]:.3f}" if isinstance(result[k], float) else str(result[k]) for k in keys]
        print(f"| {reward} | {seed} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
