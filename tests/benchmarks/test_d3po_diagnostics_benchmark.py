"""benchmarks/science/d3po_diagnostics.py: one table row per epoch, each column from the metrics a D3PO
epoch logs."""

from benchmark_scripts import folder_of, load


def test_a_row_shows_every_diagnostic_of_an_epoch(monkeypatch):
    monkeypatch.syspath_prepend(str(folder_of("learning")))  # it imports learning.py beside it
    diagnostics = load("d3po_diagnostics")
    metrics = {
        "eval_gain_mean": -0.0467,
        "eval_gain_se": 0.0186,
        "eval_colour_accuracy": 0.96875,
        "eval_shape_accuracy": 0.9375,
        "reward_gap": 0.135,
        "near_tie_share": 0.125,
        "log_ratio_w": -0.051,
        "log_ratio_l": -0.049,
        "margin_before": -1.6e-4,
        "margin_after": 7.0e-4,
        "accuracy_before": 0.45,
        "accuracy_after": 0.619,
        "clamped_fraction": 0.072,
        "kl": 0.07,
    }
    row = diagnostics.row(0, metrics)
    assert row == (
        "| 0 | -0.047 +- 0.019 | 97% / 94% | 0.135 | 12% | -0.05 / -0.05 | -1.6e-04 -> +7.0e-04 "
        "| 0.45 -> 0.62 | 7% | 0.07 |"
    )
    assert row.count("|") == len(diagnostics.COLUMNS) + 1
