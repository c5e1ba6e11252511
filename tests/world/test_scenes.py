"""The tiny model's world: deterministic images, captions that parse back, backgrounds that differ."""

import torch

from rlft.rewards.registry import jpeg_size_kb
from rlft.world.scenes import BACKGROUNDS, all_scenes, make_dataset, parse_caption


def test_the_same_seed_gives_the_same_images_and_captions():
    a, captions = make_dataset(20, seed=3)
    b, again = make_dataset(20, seed=3)
    c, _ = make_dataset(20, seed=4)
    assert torch.equal(a, b) and captions == again and not torch.equal(a, c)
    assert a.shape == (20, 3, 32, 32) and a.min() >= 0 and a.max() <= 1


def test_every_caption_parses_back_to_its_scene_and_others_do_not():
    scenes = all_scenes()
    assert len(scenes) == 1792 and all(parse_caption(s.caption) == s for s in scenes)
    assert parse_caption("a photo of a cat") is None
    assert parse_caption("a small red circle on a plain red-ish background") is None


def test_background_kinds_give_the_jpeg_size_a_range():
    images, captions = make_dataset(400, seed=0)
    sizes = jpeg_size_kb(images)
    kind = [parse_caption(c).background for c in captions]
    mean = {k: sizes[[i for i, b in enumerate(kind) if b == k]].mean().item() for k in BACKGROUNDS}
    assert mean["plain"] < mean["gradient"] < mean["striped"] < mean["noisy"], mean
