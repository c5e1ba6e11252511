"""benchmarks/speed/core.py's FLOP accounting: the CPU's attention kernels counted, and the update's time
split by kind of op (the figures docs/performance.md's D3PO FLOP rate rests on)."""

import torch
import torch.nn.functional as F
from benchmark_scripts import load
from torch.utils.flop_counter import FlopCounterMode


def test_attention_on_a_cpu_is_counted_as_two_matrix_products_forward_and_five_backward():
    core = load("core")
    q, k, v = (torch.randn(1, 2, 8, 4, requires_grad=True) for _ in range(3))  # (B, heads, L, E)
    with FlopCounterMode(display=False) as plain:
        F.scaled_dot_product_attention(q, k, v)
    with FlopCounterMode(display=False, custom_mapping=core.CPU_ATTENTION_FLOPS) as counted:
        out = F.scaled_dot_product_attention(q, k, v)
        forward = counted.get_total_flops()
        out.sum().backward()
    # Q K^T and (softmax) V: 2 * L * L * E multiply-adds each, per batch and head: 2 * 2 * 2 * 64 * 4 = 2048.
    assert plain.get_total_flops() == 0 and forward == 2048
    # Backward: Q K^T recomputed, then the gradients of the scores, V, Q and K: five products.
    assert counted.get_total_flops() == forward + 5 * forward // 2


def test_the_time_split_covers_the_kinds_of_op_and_their_flops():
    core = load("core")
    conv, x = torch.nn.Conv2d(8, 8, 3, padding=1), torch.randn(4, 8, 16, 16)
    a, b = torch.randn(64, 64), torch.randn(64, 64)

    def fn():
        with torch.no_grad():
            conv(x).relu().sum() + (a @ b).sum()

    with FlopCounterMode(display=False) as counter:
        fn()
    shares = core.where_time_goes(fn, counter.get_flop_counts()["Global"], torch.device("cpu"))
    assert [kind for kind, _, _ in shares] == ["convolution", "matmul", "attention", "other"]
    by_kind = {kind: (time, flops) for kind, time, flops in shares}
    conv_flops, mm_flops = 2 * 4 * 8 * 8 * 9 * 16 * 16, 2 * 64**3
    assert by_kind["convolution"][1] == conv_flops / (conv_flops + mm_flops)
    assert by_kind["attention"] == (0.0, 0.0) and by_kind["other"][1] == 0.0
    assert abs(sum(time for time, _ in by_kind.values()) - 1) < 1e-9 and by_kind["other"][0] > 0
    assert [core.op_kind(n) for n in ("aten::addmm", "aten.mm.default", "aten::mkldnn_convolution")] == [
        "matmul",
        "matmul",
        "convolution",
    ]


def test_the_timed_functions_take_turns_in_each_round_so_drifting_load_falls_on_each_alike():
    core = load("core")
    calls = []
    times = core.rounds(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"), repeats=3
    )
    assert calls == ["a", "b"] + ["a", "b"] * 3  # a warm-up call each, then three rounds
    assert [len(t) for t in times.values()] == [3, 3] and all(s >= 0 for t in times.values() for s in t)
