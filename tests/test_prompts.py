import re
from pathlib import Path

import pytest
import torch

import rlft.prompt_sets
from rlft.configs import D3POConfig, DRaFTConfig
from rlft.prompts import EVAL_SETS, PACKAGED, PROMPT_SETS, draw_prompts, load_prompts
from rlft.world.scenes import BACKGROUNDS, COLOURS


def test_built_in_sets_hold_the_papers_prompts():
    assert len(PROMPT_SETS["simple-animals"]) == 45  # DDPO: "45 common animals"
    assert PROMPT_SETS["simple-animals"][:3] == ("cat", "dog", "horse")
    assert len(PROMPT_SETS["animals"]) == 24 and PROMPT_SETS["animals"][0] == "a photo of a cat"
    assert len(PROMPT_SETS["animal-activities"]) == 45 * 3
    assert "an ant riding a bike" in PROMPT_SETS["animal-activities"]
    assert len(PROMPT_SETS["unseen-animals"]) == 38 and len(PROMPT_SETS["everyday-objects"]) == 50
    for name, prompts in PROMPT_SETS.items():
        assert len(set(prompts)) == len(prompts), name


def test_a_prompt_file_skips_blank_lines_and_comments(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\n\na red fox\n   \n  a blue whale  \n#a commented one\n")
    assert load_prompts(str(path)) == ("a red fox", "a blue whale")
    drawn = draw_prompts(str(path), 6, torch.Generator().manual_seed(0))
    assert set(drawn) <= {"a red fox", "a blue whale"}
    assert drawn == draw_prompts(str(path), 6, torch.Generator().manual_seed(0))
    assert DRaFTConfig(prompts=str(path)).prompts == str(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.txt", "no such file"),
        (lambda d: d, "cannot read the file"),  # a folder
        (lambda d: _write(d / "empty.txt", b"\n# only a comment\n\n"), "the file holds no prompt"),
        (lambda d: _write(d / "latin1.txt", "caf\xe9\n".encode("latin-1")), "cannot read the file"),
    ],
)
def test_bad_prompt_files_are_named_by_config_validation(make, message, tmp_path):
    path = str(make(tmp_path))
    expected = f"prompts={path!r}: {message}"
    with pytest.raises(ValueError, match=re.escape(expected) + ".*one prompt per line"):
        D3POConfig(prompts=path)


def test_an_unknown_set_name_lists_the_sets():
    expected = "prompts='animls' is not allowed: one of shapes, shapes-eval, animals, simple-animals"
    with pytest.raises(ValueError, match=expected):
        D3POConfig(prompts="animls")


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_the_world_sets_split_its_captions_into_training_and_held_out():
    train, held_out = PROMPT_SETS["shapes"], PROMPT_SETS["shapes-eval"]
    assert len(train) == 1568 and len(held_out) == 224 and not set(train) & set(held_out)
    for prompts in (train, held_out):  # every colour and background kind is in both
        assert {p.split()[2] for p in prompts} == set(COLOURS)
        assert {p.split()[6] for p in prompts} == set(BACKGROUNDS)


@pytest.mark.parametrize("name", PACKAGED)
def test_the_shipped_text_sets_load_by_name(name):
    """rlft/prompt_sets/<name>.txt loads under its name, every line a prompt once, its header skipped."""
    prompts = load_prompts(name)
    assert len(prompts) >= 50 and len(set(prompts)) == len(prompts)
    assert not any(p.startswith("#") or p != p.strip() or not p for p in prompts)
    text = (Path(rlft.prompt_sets.__file__).parent / f"{name}.txt").read_text(encoding="utf-8")
    assert text.startswith(f"# {name}: ")  # the header says what the set is
    assert D3POConfig(prompts=name, eval_prompts=name).prompts == name


@pytest.mark.parametrize("train, held_out", EVAL_SETS.items())
def test_each_evaluation_set_holds_no_prompt_of_its_training_set(train, held_out):
    """Gains on the evaluation set are not memorised prompts (compared ignoring case and spaces)."""

    def norm(prompts):
        return {" ".join(p.lower().split()) for p in prompts}

    assert load_prompts(train) and load_prompts(held_out)
    assert not norm(load_prompts(train)) & norm(load_prompts(held_out))
