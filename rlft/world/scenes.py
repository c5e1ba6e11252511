"""The tiny model's world: 32x32 captioned images of one coloured shape on a background.

"a small red circle on a noisy blue background": a shape (circle, square, triangle, ring), small or large,
in one of 8 named colours, somewhere on a background of another named colour that is plain, noisy (the
colour's brightness varies pixel by pixel), striped (the colour and a darker shade in bands) or a gradient
(darker to full along one side). Every background pixel is a shade of its colour, so a pixel's hue tells
shape from background (rlft/world/judge.py). Background kinds give JPEG size a real range (plain
files are small, striped ones large), so the compressibility rewards have something to learn.

Everything is drawn from a seeded numpy generator: the same seed gives the same scenes and pixels on every
machine. Shapes are drawn from signed distances with one pixel of anti-aliasing, so edges are soft.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SIZE = 32  # image side in pixels
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.88, 0.12, 0.10),
    "orange": (0.97, 0.55, 0.05),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.12, 0.68, 0.18),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.12, 0.22, 0.92),
    "purple": (0.55, 0.15, 0.80),
    "pink": (0.98, 0.45, 0.72),
}
SHAPES = ("circle", "square", "triangle", "ring")
SIZES = ("small", "large")
BACKGROUNDS = ("plain", "noisy", "striped", "gradient")
# Radius (circle, ring), half side (square) or circumradius (triangle), in pixels.
RADIUS = {"small": (4.5, 6.0), "large": (8.5, 11.0)}
STRIPE_SHADE, GRADIENT_SHADE = 0.55, 0.45  # the darker shade's brightness, as a fraction of the colour
NOISE_STD = 0.22  # the noisy background's brightness spread, as a fraction of the colour


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    background: str
    background_colour: str

    @property
    def caption(self) -> str:
        return (
            f"a {self.size} {self.colour} {self.shape} on a {self.background} {self.background_colour} "
            "background"
        )


def parse_caption(caption: str) -> Scene | None:
    """The scene a caption describes, or None when it is not one of this world's captions."""
    words = caption.strip().lower().split()
    if len(words) != 9 or words[0] != "a" or words[4:6] != ["on", "a"] or words[8] != "background":
        return None
    size, colour, shape, background, background_colour = words[1], words[2], words[3], words[6], words[7]
    known = (
        size in SIZES
        and colour in COLOURS
        and shape in SHAPES
        and background in BACKGROUNDS
        and background_colour in COLOURS
    )
    return Scene(shape, colour, size, background, background_colour) if known else None


def all_scenes() -> list[Scene]:
    """Every scene the captions can name (shape colour != background colour): 1,792 of them."""
    return [
        Scene(shape, colour, size, background, bg)
        for shape in SHAPES
        for colour in COLOURS
        for size in SIZES
        for background in BACKGROUNDS
        for bg in COLOURS
        if bg != colour
    ]


def random_scenes(count: int, rng: np.random.Generator) -> list[Scene]:
    scenes = all_scenes()
    return [scenes[i] for i in rng.integers(len(scenes), size=count)]


def _shape_coverage(shape: str, radius: float, cx: float, cy: float, angle: float) -> np.ndarray:
    """How much of each pixel the shape covers, (SIZE, SIZE) in [0, 1], from its signed distance."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        distance = np.hypot(dx, dy) - radius
    elif shape == "ring":
        distance = np.abs(np.hypot(dx, dy) - radius * 0.72) - radius * 0.28
    elif shape == "square":
        distance = np.maximum(np.abs(dx), np.abs(dy)) - radius * 0.85
    else:  # triangle: the largest distance past its three edges (apothem = radius / 2)
        edges = [angle + k * 2 * np.pi / 3 for k in range(3)]
        distance = np.max([dx * np.cos(a) + dy * np.sin(a) - radius / 2 for a in edges], axis=0)
    return np.clip(0.5 - distance, 0.0, 1.0)


def _background(kind: str, colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(SIZE, SIZE, 3): every pixel a shade (brightness multiple) of `colour`."""
    if kind == "plain":
        shade = np.ones((SIZE, SIZE))
    elif kind == "noisy":
        shade = np.clip(1.0 + NOISE_STD * rng.standard_normal((SIZE, SIZE)) - NOISE_STD, 0.35, 1.15)
    elif kind == "striped":
        period, phase = int(rng.integers(4, 8)), int(rng.integers(0, 8))
        bands = ((np.arange(SIZE) + phase) // (period // 2 if period > 4 else 2)) % 2
        shade = np.where(bands == 0, 1.0, STRIPE_SHADE)[:, None] * np.ones((1, SIZE))
        if rng.random() < 0.5:
            shade = shade.T
    else:  # gradient, dark to full colour along one of four directions
        ramp = np.linspace(GRADIENT_SHADE, 1.0, SIZE)[:, None] * np.ones((1, SIZE))
        shade = np.rot90(ramp, k=int(rng.integers(4)))
    return shade[..., None] * colour


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One image of `scene`, (3, SIZE, SIZE) float32 in [0, 1]; position, exact size and angle from `rng`."""
    low, high = RADIUS[scene.size]
    radius = rng.uniform(low, high)
    margin = radius + 1.0
    cx, cy = rng.uniform(margin, SIZE - margin, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    background = _background(scene.background, np.array(COLOURS[scene.background_colour]), rng)
    coverage = _shape_coverage(scene.shape, radius, cx, cy, angle)[..., None]  # (SIZE, SIZE, 1)
    image = coverage * np.array(COLOURS[scene.colour]) + (1 - coverage) * background
    return np.clip(image, 0, 1).transpose(2, 0, 1).astype(np.float32)


def make_dataset(count: int, seed: int) -> tuple[Tensor, list[str]]:
    """`count` images (N, 3, SIZE, SIZE) in [0, 1] and their captions, the same for the same seed."""
    rng = np.random.default_rng(seed)
    scenes = random_scenes(count, rng)
    images = np.stack([render(scene, rng) for scene in scenes])
    return torch.from_numpy(images), [scene.caption for scene in scenes]


def caption_vocabulary() -> str:
    """Every word a caption uses, for the tiny tokenizer."""
    words = ["a", "on", "background", *SIZES, *COLOURS, *SHAPES, *BACKGROUNDS]
    return " ".join(words)
