"""benchmarks/science/learning.py: a setting trained forward and reversed over seeds, its table written into
the generated page under the command that made it."""

import sys

from benchmark_scripts import load

learning = load("learning")


def test_a_commands_section_is_replaced_when_run_again_and_another_command_adds_its_own(tmp_path):
    page = tmp_path / "runs.md"
    learning.write_section(page, "python a.py --seeds 0", "| old |", "x86_64, 2 cores", "1 December 2026")
    learning.write_section(page, "python b.py", "| b |", "x86_64, 2 cores", "2 December 2026")
    learning.write_section(page, "python a.py --seeds 0", "| new |", "x86_64, 4 cores", "7 December 2026")
    text = page.read_text()
    assert text.startswith(learning.TITLE)
    assert learning.sections(text) == {
        "python a.py --seeds 0": "\n7 December 2026, x86_64, 4 cores.\n\n| new |\n",
        "python b.py": "\n2 December 2026, x86_64, 2 cores.\n\n| b |\n",
    }
    assert "| old |" not in text and text.index("a.py") < text.index("b.py")


def test_a_run_prints_a_row_per_seed_and_a_mean_and_writes_them_under_its_command(
    tmp_path, monkeypatch, capsys
):
    small = (
        "model=tiny-random epochs=1 pairs_per_epoch=2 num_steps=2 batch_size=4 sample_batch=2 eval_images=4"
    )
    argv = ["learning.py", "--algorithm", "d3po", "--seeds", "0", "1", "--variant", small, "--page"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(learning, "PAGE", tmp_path / "learning-runs.md")
    learning.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {small} |")]
    assert [row.split(" | ")[1] for row in rows] == ["0", "1", "mean of 2 seeds"]
    (command, body), *_ = learning.sections((tmp_path / "learning-runs.md").read_text()).items()
    assert command.startswith("python benchmarks/science/learning.py --algorithm d3po --seeds 0 1 --variant")
    assert all(row in body for row in rows)
