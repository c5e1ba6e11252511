"""The README's human-feedback walkthrough, run as written (slow tier): its commands, read from the README,
in a working folder that holds the checkout's `jobs/` and `.venv/`, so `batches/r0` and `runs/human-r0` are
the README's relative paths. A scripted person labels through the served page in between."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_feedback_learns import label_at

from rlft.feedback.batch_folder import read_manifest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def readme_command(script: str, *, after: str = "") -> list[str]:
    """The README's command line running jobs/<script> (the first after `after`), comments dropped."""
    readme = (ROOT / "README.md").read_text()
    lines = readme[readme.index(after) :].splitlines() if after else readme.splitlines()
    line = next(line for line in lines if line.startswith(f".venv/bin/python jobs/{script}"))
    return shlex.split(line.split("#")[0])


def test_the_readme_walkthrough_samples_labels_trains_and_samples_again(tmp_path):
    (tmp_path / "jobs").symlink_to(ROOT / "jobs")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])

    def run(command: list[str]) -> str:
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    assert "label it: python jobs/label.py batches/r0" in run(readme_command("sample_groups.py"))
    # The page as the README starts it (on a free port, not 8000, which another program may hold).
    server = subprocess.Popen(
        [*readme_command("label.py"), "--port", "0"], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        url = re.search(r"at (http://\S+)/", server.stdout.readline()).group(1)
        assert label_at(url, "ann", lambda image, prompt: image.mean().item()) == 12
    finally:
        server.terminate()
        server.wait(timeout=30)
    trained = run(readme_command("d3po_labels.py"))
    assert (
        "60 pairs (12 ties)" in trained and f"adapter in {tmp_path / 'runs' / 'human-r0'}/adapter" in trained
    )
    run(readme_command("sample_groups.py", after="d3po_labels.py --batch"))  # round 1, from the adapter
    manifest, _ = read_manifest(tmp_path / "batches" / "r1")
    assert manifest["adapter"] == str(tmp_path / "runs" / "human-r0" / "adapter") and manifest["round"] == 1
