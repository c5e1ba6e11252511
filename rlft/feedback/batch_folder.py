"""A labelling batch on disk: the trajectories, one PNG per sample, and a JSON manifest; never pickle.

    <folder>/trajectories.safetensors  latents (G*k, S+1, C, h, w), timesteps (S,), group (G*k,)
    <folder>/images/g0003-1.png        sample 1 of group 3 (index 3*k + 1 in the trajectories)
    <folder>/manifest.json             prompts, model, adapter, settings, seed, files and image ids
    <folder>/labels.sqlite             people's labels (rlft/feedback/labels.py), added by the labelling
    server

Every file is written to a temporary name, synced and renamed, and the manifest goes last: a folder with
a manifest is complete, and a crash leaves at most a folder without one, which sampling may write again.
The manifest's sha256 identifies the batch: labels record it, so labels for other images are detected.
"""

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load, save
from torch import Tensor

from rlft.runs.checkpoint import fsync

MANIFEST = "manifest.json"
TRAJECTORIES = "trajectories.safetensors"
IMAGES = "images"
FORMAT = "rlft-labelling-batch"
VERSION = 1
TRAJECTORY_KEYS = ("latents", "timesteps", "group")


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, rename over `path`, fsync the folder: readers see the old file or the whole new one."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    fsync(path.parent)  # the rename


def image_id(group: int, member: int) -> str:
    return f"g{group:04d}-{member}"


def png_bytes(image: Tensor) -> bytes:
    """An image (3, H, W) in [0, 1] as PNG bytes (8 bits per channel)."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.cpu().numpy())).save(buffer, format="PNG")
    return buffer.getvalue()


def groups_listing(prompts: list[str], group_size: int) -> list[dict]:
    """The manifest's "groups": each group's prompt and its images' ids, files and trajectory indices."""
    return [
        {
            "group": g,
            "prompt": prompt,
            "images": [
                {"id": image_id(g, m), "file": f"{IMAGES}/{image_id(g, m)}.png", "index": g * group_size + m}
                for m in range(group_size)
            ],
        }
        for g, prompt in enumerate(prompts)
    ]


def write_batch(folder: str | Path, samples: dict[str, Tensor], prompts: list[str], info: dict) -> Path:
    """Store sampled groups; samples as `sample_chunk` gives them (group indexes `prompts`), members of a
    group adjacent. `info` (model, adapter, settings, seed, ...) goes into the manifest as it is."""
    folder = Path(folder)
    group_size = len(samples["group"]) // len(prompts)
    expected = torch.arange(len(prompts)).repeat_interleave(group_size)
    if not torch.equal(samples["group"].cpu(), expected):
        raise ValueError("samples must hold len(prompts) groups of equal size, members adjacent")
    (folder / IMAGES).mkdir(parents=True, exist_ok=True)
    trajectories = save({k: samples[k].contiguous().cpu() for k in TRAJECTORY_KEYS})
    write_atomic(folder / TRAJECTORIES, trajectories)
    groups = groups_listing(prompts, group_size)
    for group in groups:
        for image in group["images"]:
            png = png_bytes(samples["images"][image["index"]])
            write_atomic(folder / image["file"], png)
            image["sha256"] = hashlib.sha256(png).hexdigest()  # a swapped image is detected
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        **info,
        "group_size": group_size,
        "prompts": prompts,
        "trajectories": TRAJECTORIES,
        "trajectories_sha256": hashlib.sha256(trajectories).hexdigest(),
        "groups": groups,
    }
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    return folder


def read_manifest(folder: str | Path) -> tuple[dict, str]:
    """(manifest, its sha256), or a ValueError naming the folder."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} holds no {MANIFEST}: not a complete labelling batch")
    data = path.read_bytes()
    try:
        manifest = json.loads(data)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("version") != VERSION
    ):
        raise ValueError(f"{path}: not a {FORMAT} manifest of version {VERSION}")
    problem = manifest_problem(manifest)
    if problem:
        raise ValueError(f"{path}: {problem} (edited by hand? sample the batch again)")
    return manifest, hashlib.sha256(data).hexdigest()


def manifest_problem(manifest: dict) -> str | None:
    """What is malformed in a manifest's listing of groups and images, or None. Image files must be the
    batch's own images/<id>.png: nothing a hand edit names elsewhere is read or served."""
    groups = manifest.get("groups")
    if not isinstance(groups, list) or not groups:
        return "'groups' is not a non-empty list"
    if not isinstance(manifest.get("trajectories"), str) or not isinstance(manifest.get("settings"), dict):
        return "'trajectories' or 'settings' is missing"
    for g, group in enumerate(groups):
        if not isinstance(group, dict) or group.get("group") != g or not isinstance(group.get("prompt"), str):
            return f"group {g} lacks its number or prompt"
        images = group.get("images")
        if not isinstance(images, list) or not images:
            return f"group {g} lists no images"
        for image in images:
            ok = (
                isinstance(image, dict)
                and isinstance(image.get("id"), str)
                and isinstance(image.get("index"), int)
            )
            if not ok or image.get("file") != f"{IMAGES}/{image['id']}.png" or "/" in image["id"]:
                return f"group {g} lists an image that is not the batch's own ({image!r:.80})"
    return None


def check_image(folder: Path, image: dict) -> bytes:
    """An image file's bytes, checked against the hash the manifest recorded (batches from before hashes
    were recorded are not checked); a ValueError names a missing or swapped file."""
    path = Path(folder) / image["file"]
    if not path.is_file():
        raise ValueError(f"{str(folder)!r}: image file {image['file']} is missing")
    data = path.read_bytes()
    if "sha256" in image and hashlib.sha256(data).hexdigest() != image["sha256"]:
        raise ValueError(f"{path}: does not match the manifest (swapped or changed since sampling)")
    return data


def read_trajectories(folder: str | Path, manifest: dict) -> dict[str, Tensor]:
    """The stored trajectories, checked against the manifest (present, same bytes, one row per image)."""
    path = Path(folder) / manifest["trajectories"]
    if not path.is_file():
        raise ValueError(f"{str(folder)!r}: trajectories file {path.name} is missing")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["trajectories_sha256"]:
        raise ValueError(f"{path}: does not match the manifest (changed or truncated since sampling)")
    tensors = load(data)
    count = sum(len(g["images"]) for g in manifest["groups"])
    if any(k not in tensors for k in TRAJECTORY_KEYS) or len(tensors["latents"]) != count:
        raise ValueError(f"{path}: expected {', '.join(TRAJECTORY_KEYS)} with {count} samples")
    return tensors


def read_images(folder: str | Path, manifest: dict) -> Tensor:
    """The stored PNGs in trajectory order, (B, 3, H, W) in [0, 1]."""
    images = [image for group in manifest["groups"] for image in group["images"]]
    images.sort(key=lambda image: image["index"])
    arrays = []
    for image in images:
        data = check_image(Path(folder), image)
        arrays.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
