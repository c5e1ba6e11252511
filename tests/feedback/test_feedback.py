import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlft.algorithms.pairs import pair_items
from rlft.diffusion.policy import build_policy
from rlft.epoch import concat_samples, epoch_prompts, plan_chunks, sample_chunk
from rlft.feedback import batch_folder
from rlft.feedback.batch_folder import MANIFEST, TRAJECTORIES, read_manifest
from rlft.feedback.human import labelled_items
from rlft.feedback.labels import Label, connect, save_label
from rlft.feedback.labels_config import D3POLabelsConfig
from rlft.feedback.sample_groups import SampleGroupsConfig, policy_config, sample_groups
from rlft.training import train_labels

SETTINGS = dict(groups=3, group_size=3, num_steps=3, round=2)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled") / "batch"
    return sample_groups(SampleGroupsConfig(out=str(out), **SETTINGS), log=lambda line: None)


@pytest.fixture
def batch(sampled, tmp_path):
    """A fresh copy of the sampled batch per test, so labels never leak between tests."""
    return shutil.copytree(sampled, tmp_path / "batch")


def label(folder, who, group, best, worst, deformed=()):
    manifest, sha = read_manifest(folder)
    conn = connect(folder)
    save_label(conn, Label(who, group, best, worst, tuple(deformed)), sha)
    conn.close()


@pytest.mark.parametrize("size", [1, 9])
def test_group_size_outside_2_to_8_is_refused_naming_the_field(size, tmp_path):
    with pytest.raises(ValueError, match="group_size=.*2 to 8"):
        SampleGroupsConfig(out=str(tmp_path), group_size=size)


def test_the_batch_holds_trajectories_pngs_and_a_manifest(batch):
    tensors = load_file(batch / TRAJECTORIES)
    assert tensors["latents"].shape == (9, 4, 4, 16, 16)  # (G*k, S+1, C, h, w)
    assert tensors["group"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert tensors["timesteps"].shape == (3,)
    # the members of a group start from the same x_T and then part ways
    assert torch.equal(tensors["latents"][0, 0], tensors["latents"][2, 0])
    assert not torch.equal(tensors["latents"][0, -1], tensors["latents"][2, -1])
    manifest, _ = read_manifest(batch)
    assert manifest["settings"] | {"model": manifest["model"]} == {
        "num_steps": 3,
        "guidance_scale": 5.0,
        "eta": 1.0,
        "resolution": 32,
        "group_size": 3,
        "model": "tiny",
    }
    image = manifest["groups"][1]["images"][2]
    assert (image["id"], image["index"]) == ("g0001-2", 5)
    assert (batch / image["file"]).read_bytes()[:4] == b"\x89PNG"
    assert [g["prompt"] for g in manifest["groups"]] == manifest["prompts"]


def test_a_round_repeats_the_d3po_jobs_epoch_of_the_same_number(batch):
    d3po = policy_config(SampleGroupsConfig(out="unused", **SETTINGS))
    pipe, _ = build_policy(d3po)
    prompts = epoch_prompts(d3po, epoch=2)
    chunks = plan_chunks(prompts, d3po.sample_batch, d3po.seed, 2)
    expected = concat_samples([sample_chunk(pipe, c, d3po.sampling_settings()) for c in chunks])
    assert read_manifest(batch)[0]["prompts"] == prompts
    assert torch.equal(load_file(batch / TRAJECTORIES)["latents"], expected["latents"])


def test_a_folder_holding_a_batch_is_not_overwritten(batch):
    with pytest.raises(ValueError, match="already holds a labelling batch"):
        sample_groups(SampleGroupsConfig(out=str(batch), **SETTINGS))


def test_a_crash_while_writing_leaves_no_manifest_and_the_folder_can_be_sampled_again(tmp_path, monkeypatch):
    def crash(image):
        raise OSError("disk full")

    monkeypatch.setattr(batch_folder, "png_bytes", crash)
    cfg = SampleGroupsConfig(out=str(tmp_path / "b"), groups=1, group_size=2, num_steps=2)
    with pytest.raises(OSError):
        sample_groups(cfg)
    assert (tmp_path / "b" / TRAJECTORIES).exists() and not (tmp_path / "b" / MANIFEST).exists()
    with pytest.raises(ValueError, match="no manifest.json"):
        labelled_items(tmp_path / "b")
    monkeypatch.undo()
    sample_groups(cfg, log=lambda line: None)
    assert read_manifest(tmp_path / "b")[0]["group_size"] == 2
    assert not list((tmp_path / "b").rglob(".*.tmp"))  # no temporary files left


def test_sampling_from_an_adapter_changes_the_images_but_not_the_shared_noise(batch, tmp_path):
    d3po = dataclasses.replace(policy_config(SampleGroupsConfig(out="unused", **SETTINGS)), lora_rank=2)
    _, policy = build_policy(d3po)
    torch.manual_seed(1)
    for p in policy.parameters():
        p.data.normal_(std=0.5)
    policy.save(tmp_path / "adapter")  # what the D3PO job leaves in runs/<run>/adapter
    cfg = SampleGroupsConfig(out=str(tmp_path / "tuned"), adapter=str(tmp_path / "adapter"), **SETTINGS)
    tuned = sample_groups(cfg, log=lambda line: None)  # rank 2 read from the adapter, not given
    base, after = load_file(batch / TRAJECTORIES)["latents"], load_file(tuned / TRAJECTORIES)["latents"]
    assert torch.equal(base[:, 0], after[:, 0])
    assert (base[:, -1] - after[:, -1]).abs().mean() > 1e-3
    manifest, _ = read_manifest(tuned)
    assert (
        manifest["adapter"] == str((tmp_path / "adapter").resolve()) and len(manifest["adapter_sha256"]) == 64
    )
    # Training on this batch continues the adapter: its LoRA shape, and no other, whatever the defaults.
    assert D3POLabelsConfig(batch=str(tuned)).lora_rank == 2
    with pytest.raises(ValueError, match=r"lora_rank=4 is not allowed: 2, the shape of .*adapter"):
        D3POLabelsConfig(batch=str(tuned), lora_rank=4)
    with pytest.raises(ValueError, match=r"full_finetune=True is not allowed: False: .* continues adapter"):
        D3POLabelsConfig(batch=str(tuned), full_finetune=True)


def test_a_missing_adapter_is_refused_naming_the_folder(tmp_path):
    cfg = SampleGroupsConfig(out=str(tmp_path / "b"), adapter=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="nowhere"):
        sample_groups(cfg)


def test_labelled_items_gives_the_samples_and_the_majority_pairs(batch):
    label(batch, "ann", 0, "g0000-2", "g0000-0")
    label(batch, "ann", 2, None, None, deformed=["g0002-1"])
    samples, labels = labelled_items(batch)
    # group 0: 2 > 1 > 0, i.e. samples 2 > 1, 2 > 0, 1 > 0; group 2: sample 7 is deformed, 6 and 8 beat it.
    pairs = list(zip(labels["index_w"].tolist(), labels["index_l"].tolist(), strict=True))
    assert pairs == [(1, 0), (2, 0), (2, 1), (6, 7), (8, 7)]
    assert (labels["ties"], labels["groups_labelled"], labels["annotators"]) == (1, 2, ["ann"])
    assert samples["latents"].shape == (9, 4, 4, 16, 16) and samples["images"].shape == (9, 3, 32, 32)
    items = pair_items(
        samples["latents"], samples["group"], samples["timesteps"], labels["index_w"], labels["index_l"]
    )
    assert items["latents_w"].shape == (5 * 3, 4, 16, 16)
    assert labels["prompts"][items["prompt"][-1]] == labels["prompts"][2]


def test_labelled_items_refuses_a_folder_without_labels(batch):
    with pytest.raises(ValueError, match="no labels"):
        labelled_items(batch)
    connect(batch).close()  # an empty label store
    with pytest.raises(ValueError, match=f"{batch}.*no labels"):
        labelled_items(batch)


def test_labelled_items_refuses_labels_for_images_that_do_not_exist(batch):
    label(batch, "ann", 0, "g0000-0", "g0009-9")
    with pytest.raises(ValueError, match="g0009-9"):
        labelled_items(batch)


def test_labelled_items_refuses_missing_or_changed_trajectories(batch):
    label(batch, "ann", 0, "g0000-0", "g0000-1")
    data = (batch / TRAJECTORIES).read_bytes()
    (batch / TRAJECTORIES).write_bytes(data[:-10])
    with pytest.raises(ValueError, match="does not match the manifest"):
        labelled_items(batch)
    (batch / TRAJECTORIES).unlink()
    with pytest.raises(ValueError, match=f"{batch}.*trajectories.*missing"):
        labelled_items(batch)


def test_labelled_items_refuses_a_swapped_image(batch):
    label(batch, "ann", 0, "g0000-0", "g0000-1")
    (batch / "images" / "g0000-0.png").write_bytes((batch / "images" / "g0000-1.png").read_bytes())
    with pytest.raises(ValueError, match=r"g0000-0.png: does not match the manifest \(swapped"):
        labelled_items(batch)


def test_labelled_items_refuses_labels_made_for_another_manifest(batch):
    label(batch, "ann", 0, "g0000-0", "g0000-1")
    manifest = json.loads((batch / MANIFEST).read_text())
    (batch / MANIFEST).write_text(json.dumps(manifest | {"seed": 5}))
    with pytest.raises(ValueError, match="another manifest"):
        labelled_items(batch)


def test_the_labels_config_takes_the_batchs_sampling_and_refuses_what_would_not_match(batch, tmp_path):
    manifest, _ = read_manifest(batch)
    cfg = D3POLabelsConfig(batch=str(batch), ray=False)  # training recomputes the sampler's log-probabilities
    settings = {k: manifest["settings"][k] for k in ("num_steps", "guidance_scale", "eta", "resolution")}
    assert {k: getattr(cfg, k) for k in settings} == settings and settings["num_steps"] == 3
    assert (cfg.model, cfg.seed) == (manifest["model"], manifest["seed"])
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.full_finetune) == (4, None, False)  # no start adapter
    with pytest.raises(ValueError, match=r"seed=1 is not allowed: 0, the seed .* was sampled with"):
        D3POLabelsConfig(batch=str(batch), seed=1)  # the tiny model's weights come from the seed
    with pytest.raises(ValueError, match=r"batch='.*nowhere' is not allowed: .*holds no manifest.json"):
        D3POLabelsConfig(batch=str(tmp_path / "nowhere"))


def test_a_pass_over_the_labelled_pairs_in_this_process_writes_the_adapter(batch, tmp_path):
    label(batch, "ann", 0, "g0000-2", "g0000-0")
    label(batch, "ann", 1, "g0001-1", "g0001-2")
    cfg = D3POLabelsConfig(batch=str(batch), ray=False, epochs=1, batch_size=6)
    (metrics,) = train_labels(cfg, tmp_path / "run", log=lambda line: None)
    assert metrics["pairs"] == 6 and 0 < metrics["loss"] < 1  # beta * clipped log-ratios: near log 2
    assert (tmp_path / "run" / "adapter" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow
def test_the_job_samples_a_batch_and_says_how_to_label_it(tmp_path):
    job = [
        sys.executable,
        str(Path(__file__).parents[2] / "jobs" / "sample_groups.py"),
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(
        job + ["--groups", "1", "--group-size", "2", "--num-steps", "2"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert f"label it: python jobs/label.py {tmp_path}" in done.stdout
    assert read_manifest(tmp_path)[0]["group_size"] == 2


def test_a_busy_port_is_refused_naming_it(batch):
    import socket

    from rlft.cli import main

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            main(["label", str(batch), "--port", str(port)])
    message = str(exited.value.code)
    assert message.startswith(f"error: port={port} is not allowed: Address already in use on 127.0.0.1")
    assert "--port (0 picks a free one)" in message and "\n" not in message
