"""benchmarks/science/tiny_model_quality.py's reading of D3PO's groups: what a preference within a group
can learn."""

import numpy as np
import pytest
import torch
from benchmark_scripts import load

from rlft.world.judge import color_alignment_soft
from rlft.world.scenes import parse_caption, render


def test_group_spread_counts_the_groups_whose_members_disagree_on_the_colour():
    quality = load("tiny_model_quality")
    red, green = (f"a large {c} circle on a plain blue background" for c in ("red", "green"))
    rng = np.random.default_rng(0)
    images = torch.stack([torch.from_numpy(render(parse_caption(c), rng)) for c in (red, red, red, green)])
    # Both groups are of the red caption: the first all red, the second one red and one green member.
    text = quality.group_spread(images, [red, red], group_size=2)
    assert text.startswith("groups of 2 sharing x_T: 50% disagree on the colour")
    within, between = (float(part.split()[0]) for part in text.split("spread ")[1].split(", "))
    reward = color_alignment_soft(images, [red] * 4)
    assert reward[3] < 0.1 < 0.9 < reward[:3].min()  # the green member scores nothing against "red"
    assert within == pytest.approx((reward[2] - reward[3]).item() / 2**0.5 / 2, abs=2e-3)
    assert between == pytest.approx(abs(reward[:2].mean() - reward[2:].mean()).item() / 2**0.5, abs=2e-3)
