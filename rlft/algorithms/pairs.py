"""D3PO's pairs: which samples of a group are preferred (by a reward's order), and the training items the
pairs become: (pair, step) items of the recorded trajectories, or the noised objective's (pair, draw) items.
Pure tensor functions; the driver calls them (rlft/algorithms/d3po.py's epoch), so nothing here needs a model.
"""

import torch
from torch import Tensor


def dominates(a: Tensor, b: Tensor) -> bool:
    """Whether rewards a (R,) are at least as good as b on every reward and better on one (Pareto)."""
    return bool((a >= b).all() and (a > b).any())


def pairs_from_rewards(
    rewards: Tensor, group: Tensor, best_worst: bool = False
) -> tuple[Tensor, Tensor, int]:
    """Every pair of samples in the same group where one is preferred, as (index_w, index_l, ties).

    rewards (B,) or (B, R) for R rewards; group (B,). With several rewards a sample is preferred only when it
    is at least as good on every reward and better on one, the rule of the official D3PO code (its
    `compare` in scripts/train_with_rm.py); with one reward that is the larger reward. A pair where neither
    is preferred (equal, or each better on a different reward) carries no preference and is counted in
    `ties`; a sample with a NaN on any reward takes part in no pair.

    `best_worst` keeps one pair per group instead, its best sample over its worst (one reward only; the first
    of equals): with groups of 4 or more, the pairs with the widest reward margins.
    """
    rewards = rewards[:, None] if rewards.ndim == 1 else rewards  # (B, R)
    finite = torch.isfinite(rewards).all(dim=1)
    if best_worst:
        return _best_over_worst(rewards, group, finite)
    index_w, index_l, ties = [], [], 0
    for g in group.unique():
        members = ((group == g) & finite).nonzero().flatten().tolist()
        for a, i in enumerate(members):
            for j in members[a + 1 :]:
                if dominates(rewards[i], rewards[j]):
                    index_w.append(i)
                    index_l.append(j)
                elif dominates(rewards[j], rewards[i]):
                    index_w.append(j)
                    index_l.append(i)
                else:
                    ties += 1
    return torch.tensor(index_w, dtype=torch.long), torch.tensor(index_l, dtype=torch.long), ties


def _best_over_worst(rewards: Tensor, group: Tensor, finite: Tensor) -> tuple[Tensor, Tensor, int]:
    if rewards.shape[1] != 1:
        raise ValueError("best-worst pairs need one reward; several rewards have no single best sample")
    index_w, index_l, ties = [], [], 0
    for g in group.unique():
        members = ((group == g) & finite).nonzero().flatten()
        if len(members) < 2:
            continue
        scores = rewards[members, 0]
        best, worst = members[scores.argmax()].item(), members[scores.argmin()].item()
        if rewards[best, 0] > rewards[worst, 0]:
            index_w.append(best)
            index_l.append(worst)
        else:
            ties += 1
    return torch.tensor(index_w, dtype=torch.long), torch.tensor(index_l, dtype=torch.long), ties


def pair_items(
    latents: Tensor, group: Tensor, timesteps: Tensor, index_w: Tensor, index_l: Tensor
) -> dict[str, Tensor]:
    """Flatten P pairs x S steps into P*S training items, one (pair, timestep) each.

    latents (B, S+1, C, h, w) as sampled, group (B,) each sample's prompt index, timesteps (S,).
    Keys: latents_w/_l (x_t) and next_latents_w/_l (x_{t-1}) (N, C, h, w), timesteps (N,), prompt (N,)
    (both members of a pair share it). Item n is pair n // S at step n % S.
    """
    device, steps = latents.device, timesteps.numel()
    pair = torch.arange(len(index_w), device=device).repeat_interleave(steps)  # (N,)
    step = torch.arange(steps, device=device).repeat(len(index_w))  # (N,)
    index_w, index_l = index_w.to(device), index_l.to(device)
    items = {"timesteps": timesteps.to(device)[step], "prompt": group.to(device)[index_w][pair]}
    for suffix, index in (("w", index_w), ("l", index_l)):
        sample = index[pair]
        items[f"latents_{suffix}"] = latents[sample, step]
        items[f"next_latents_{suffix}"] = latents[sample, step + 1]
    return items


def noised_pair_items(
    latents: Tensor,
    group: Tensor,
    timesteps: Tensor,
    index_w: Tensor,
    index_l: Tensor,
    draws: int,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """`draws` items per pair for the noised objective: the pair's final latents (x_0 of both members,
    latents_w/_l (N, C, h, w)), one of the sampling schedule's timesteps (N,) and one noise (N, C, h, w),
    both shared by the pair's members and drawn from `generator`; prompt (N,). Item n is pair n // draws."""
    pair = torch.arange(len(index_w)).repeat_interleave(draws)  # (N,)
    final = latents[:, -1].cpu()
    which = torch.randint(0, len(timesteps), (len(pair),), generator=generator)
    noise = torch.randn((len(pair), *final.shape[1:]), generator=generator, dtype=final.dtype)
    return {
        "timesteps": timesteps.cpu()[which],
        "prompt": group.cpu()[index_w][pair],
        "latents_w": final[index_w][pair],
        "latents_l": final[index_l][pair],
        "noise": noise,
    }


def d3po_items(
    samples: dict[str, Tensor],
    rewards: Tensor,
    reverse: bool = False,
    pairs: str = "all",
    skip_final_steps: int = 0,
    noised_draws: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """(pair, timestep) items from the preferences within each group (`pairs_from_rewards`); rewards (B,) or
    (B, R) for several rewards; a sample with a NaN reward takes no part. `reverse` swaps every preference
    (the control run of `--reverse-preferences`); `pairs` is D3POConfig.pairs ("all" or "best-worst");
    the last `skip_final_steps` denoising steps are not trained. With `noised_draws`, the items are the
    noised objective's (`noised_pair_items`, timesteps drawn from the steps trained).
    Metrics: pairs, ties, and on the first reward `gap_metrics`' (how much signal the pairs carry)."""
    signed = -rewards if reverse else rewards
    index_w, index_l, ties = pairs_from_rewards(signed, samples["group"], best_worst=pairs == "best-worst")
    trained = len(samples["timesteps"]) - skip_final_steps  # the first steps; x_t of each and its x_{t-1}
    if noised_draws:
        args = (samples["latents"], samples["group"], samples["timesteps"][:trained], index_w, index_l)
        items = noised_pair_items(*args, noised_draws, generator or torch.Generator())
    else:
        latents, timesteps = samples["latents"][:, : trained + 1], samples["timesteps"][:trained]
        items = pair_items(latents, samples["group"], timesteps, index_w, index_l)
    first = signed if signed.ndim == 1 else signed[:, 0]  # (B,): the first reward, in the trained direction
    return items, {"pairs": float(len(index_w)), "ties": float(ties)} | gap_metrics(first, index_w, index_l)


def gap_metrics(rewards: Tensor, index_w: Tensor, index_l: Tensor) -> dict[str, float]:
    """reward_gap, the mean margin by which the trained pairs' preferred members won, and near_tie_share,
    the share of pairs won by less than a quarter of the epoch's reward spread (standard deviation): pairs
    whose order a little noise in the reward could flip. rewards (B,), one reward."""
    if not len(index_w):
        return {"reward_gap": 0.0, "near_tie_share": 0.0}
    gaps = rewards[index_w] - rewards[index_l]
    spread = rewards[torch.isfinite(rewards)].std()
    return {"reward_gap": gaps.mean().item(), "near_tie_share": (gaps < 0.25 * spread).float().mean().item()}
