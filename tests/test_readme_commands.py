"""Every rlft command in the README's code blocks parses as written (flags, values, recipes): a newcomer who
copies one meets no flag the job does not know."""

import re
import shlex
import shutil
from pathlib import Path

import pytest

from rlft.configs import D3POConfig, DDPOConfig, DRaFTConfig
from rlft.configs.flags import parse_config
from rlft.feedback.label_server import LabelConfig
from rlft.feedback.labels_config import D3POLabelsConfig
from rlft.feedback.sample_groups import SampleGroupsConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "d3po": D3POConfig,
    "draft": DRaFTConfig,
    "ddpo": DDPOConfig,
    "sample-groups": SampleGroupsConfig,
    "label": LabelConfig,
    "train-labels": D3POLabelsConfig,
}
JOB_FILES = {"d3po_labels": "train-labels", "sample_groups": "sample-groups"}
# `rlft <command>` or `python jobs/<job>.py`, then its flags up to a shell operator or comment
COMMAND = re.compile(r"(?:\brlft ([a-z0-9-]+)|jobs/(\w+)\.py)((?:\s+[^\s&|;#>]+)*)")


def readme_commands() -> list[tuple[str, list[str]]]:
    blocks, block, shell = [], None, False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            if block is not None and shell:
                blocks.append("\n".join(block))
            block, shell = (
                (None, False) if block is not None else ([], line[3:].strip() in ("", "bash", "sh"))
            )
        elif block is not None:
            block.append(line)
    found = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if (
                line.lstrip().startswith(("#", "$ #"))
                or "error:" in line
                or line.startswith(("epoch", "plan"))
            ):
                continue
            for command, job_file, flags in COMMAND.findall(line):
                name = command or JOB_FILES.get(job_file, job_file)
                if name in CONFIGS:
                    words = shlex.split(flags.replace("<", "").replace(">", ""))
                    if words != ["[flags]"]:  # `rlft train-labels [flags]`: a synopsis, not a command
                        found.append((name, words))
    return found


def test_the_readme_shows_commands():
    names = {name for name, _ in readme_commands()}
    assert {"d3po", "draft", "ddpo"} <= names, names


@pytest.mark.parametrize(
    "name, flags", readme_commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else x
)
def test_each_readme_command_parses_as_written(name, flags, tmp_path, monkeypatch):
    if name == "sample-groups" and "--out" not in flags:
        flags = [*flags, "--out", "batch"]
    monkeypatch.chdir(tmp_path)
    recipe = flags[flags.index("--config") + 1] if "--config" in flags else None
    if recipe is not None and recipe.endswith(".toml"):  # the reader's own copy of a shipped recipe
        shipped = next(
            p for p in (ROOT / "rlft" / "recipes").glob("*.toml") if f'job = "{name}"' in p.read_text()
        )
        shutil.copy(shipped, tmp_path / recipe)
    try:
        parse_config(CONFIGS[name], name, flags)
    except ValueError as error:
        # a labelled batch that exists only after the README's earlier steps: the flags themselves parsed
        assert name == "train-labels" and "batch=" in str(error), str(error)
