"""A fixed judge for the tiny model's world (rlft/world/scenes.py): what an image shows, and a colour
reward.

No learning. A pixel's colour is the palette colour (scenes.COLOURS) nearest in hue: the direction of its
chromaticity, rgb / (r+g+b), from grey's, which neither a shade (brightness multiple) nor washing out towards
grey changes; dark, grey or in-between pixels are no colour. The background colour is the commonest on the
border (the world never draws a shape there), the shape colour the commonest other one. The least-squares fit
`pixel = alpha * shape colour + beta * background colour` splits anti-aliased edges; the shape is where alpha
passes 1/2. From that:
- kind: a hole at the centroid makes a ring; otherwise moments that ignore size and rotation tell a square
  (upright, so E[dx^2 dy^2] / E[r^2]^2 is large) and a triangle (a large E[r^2] / area) from a circle;
- size: the radius the area implies for that kind, against the gap between scenes.RADIUS's two ranges;
- background kind, from the background pixels' shade away from the shape: its spread (plain or not), how
  much of it row or column means explain (noisy or not), and whether they climb once (gradient) or go up and
  down (striped).
Thresholds were set on clean world images and on blurred and noised ones, since samples are imperfect.
Accuracy on scenes.make_dataset(2000, seed=1): 100 % on every attribute; on uniform noise, chance.

`color_alignment`, the "colour alignment" reward, is how much the shape has the prompt's shape colour: of the
pixels not of the prompt's background colour, the share of its shape colour, each pixel counted by how near
in hue and how saturated it is; grey and dark pixels count against, and blends of the prompt's two colours
next to both (clean edges) count as their share of the shape colour. `color_alignment_soft` is the same with
soft colour memberships, differentiable in the pixels, and ranks images as the hard one does (Spearman ~0.97
on real, washed-out, noisy and mismatched images; tests/world/test_judge.py).
"""

from dataclasses import astuple, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rlft.world import scenes

NAMES = list(scenes.COLOURS)
PALETTE = torch.tensor(list(scenes.COLOURS.values()), dtype=torch.float64)  # (8, 3)
MIN_VALUE, MIN_SATURATION = 0.1, 0.25  # darker or greyer pixels are no colour
# Hue distance (2 sin(angle / 2), about the angle) past which a pixel is no palette colour: 12 degrees, half
# the closest pair's (orange and yellow); and the soft version's distance scale.
MAX_DISTANCE, TEMPERATURE = 0.21, 0.12
BLEND_RESIDUAL = 0.05  # a pixel this close (relative) to a blend of the prompt's two colours is an edge
SQUARE_CROSS, TRIANGLE_MOMENT = 0.205, (0.168, 0.175)  # see _shape_kind
# Area over radius squared for each shape (scenes._shape_coverage), and the radius between small and large.
AREA_PER_R2 = {"circle": torch.pi, "square": 1.7**2, "triangle": 3 * 3**0.5 / 4, "ring": torch.pi * 0.8064}
SIZE_THRESHOLD = (scenes.RADIUS["small"][1] + scenes.RADIUS["large"][0]) / 2
# Background thresholds: shade spread of a plain background (std), share of the shade variance that row or
# column means explain for stripes and gradients, total variation of those means over their range for stripes.
PLAIN_SPREAD, BANDED, STRIPED_STEPS = 0.04, 0.5, 3.0


@dataclass(frozen=True)
class Judgement:
    """What an image shows, in scenes.Scene's words; None where the judge cannot tell."""

    shape: str | None
    colour: str | None
    size: str | None
    background: str | None
    background_colour: str | None


def _saturation_value(images: Tensor) -> tuple[Tensor, Tensor]:
    """HSV saturation and value, each (B, H, W)."""
    value, low = images.amax(dim=1), images.amin(dim=1)
    return (value - low) / value.clamp_min(1e-6), value


def _hue(colours: Tensor) -> Tensor:
    """Unit direction of chromaticity, rgb / (r+g+b), from grey's (1/3, 1/3, 1/3): (N, 3, ...) -> same."""
    chroma = colours / colours.sum(dim=1, keepdim=True).clamp_min(1e-6) - 1 / 3
    return chroma / chroma.norm(dim=1, keepdim=True).clamp_min(1e-6)


def _squared_distances(images: Tensor) -> Tensor:
    """Squared distance, 2 - 2 cos(angle), of each pixel's hue to each palette colour's: (B, 8, H, W)."""
    hue, palette = _hue(images), _hue(PALETTE.to(images))  # (B, 3, H, W), (8, 3)
    cos = sum(hue[:, c, None] * palette[:, c, None, None] for c in range(3))  # (B, 8, H, W), no 5-D temporary
    return (2 - 2 * cos).clamp_min(0)


def colour_labels(images: Tensor) -> tuple[Tensor, Tensor]:
    """Each pixel's colour, an index into NAMES or -1 for none, and how sure that is, in (0, 1] or 0 for none:
    (B, 3, H, W) -> (B, H, W) long, (B, H, W)."""
    squared, label = _squared_distances(images).min(dim=1)
    saturation, value = _saturation_value(images)
    coloured = (squared < MAX_DISTANCE**2) & (saturation > MIN_SATURATION) & (value > MIN_VALUE)
    # Quadratic, like the soft version's exp(-d^2 / 2 T^2): a hue a few degrees off is still nearly sure.
    return torch.where(coloured, label, -1), (1 - squared / MAX_DISTANCE**2) * coloured


def _mode(labels: Tensor, weights: Tensor) -> int:
    """The label >= 0 with the most weight in 1-D tensors, -1 when there is none."""
    votes = torch.bincount(labels.clamp_min(0), weights * (labels >= 0), minlength=len(NAMES))
    return int(votes.argmax()) if votes.sum() > 0 else -1


def _fit(images: Tensor, shape: Tensor, background: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares fit image = alpha * palette[shape] + beta * palette[background] per pixel: (alpha, beta)
    (B, 2, H, W), each clamped to >= 0, and the squared residual over the pixel's squared norm (B, H, W)."""
    palette = PALETTE.to(images)
    basis = torch.stack([palette[shape], palette[background]], dim=2)  # (B, 3, 2)
    # Broadcast and sum rather than matmul: a (2, 3) @ (3, 1024) matmul took ~15 ms with a busy BLAS pool.
    coef = (torch.linalg.pinv(basis)[..., None, None] * images[:, None]).sum(dim=2).clamp_min(0)
    fit = (basis[..., None, None] * coef[:, None]).sum(dim=2)  # (B, 3, H, W)
    return coef, ((images - fit) ** 2).sum(dim=1) / (images**2).sum(dim=1).clamp_min(MIN_VALUE**2)


def _shape_kind(mask: Tensor) -> tuple[str | None, float]:
    """Shape kind and area (pixels) from the shape's pixels, (H, W) of 0 or 1."""
    area = float(mask.sum())
    if area < 4:
        return None, area
    y, x = torch.meshgrid(*(torch.arange(n, dtype=mask.dtype) for n in mask.shape), indexing="ij")
    cy, cx = float((mask * y).sum()) / area, float((mask * x).sum()) / area
    dy2, dx2 = (y - cy) ** 2, (x - cx) ** 2  # (H, W)
    # Polar moment over area^2 (a pixel's own 1/6 added) ignores size and rotation: a disc's is
    # 1/(2 pi) = 0.159, a square's 1/6 = 0.167, an equilateral triangle's sqrt(3)/9 = 0.192.
    moment = (float((mask * (dx2 + dy2)).sum()) + area / 6) / area**2
    # E[dx^2 dy^2] / E[r^2]^2 is 1/4 for the world's squares (upright) and 1/6 for a disc.
    cross = float((mask * dx2 * dy2).sum()) * area / float((mask * (dx2 + dy2)).sum()) ** 2
    if mask[round(cy), round(cx)] == 0:
        return "ring", area
    if cross > SQUARE_CROSS and moment < TRIANGLE_MOMENT[1]:
        return "square", area
    return ("triangle" if moment > TRIANGLE_MOMENT[0] else "circle"), area


def _background_kind(shade: Tensor, mask: Tensor) -> str:
    """Background kind from the shade (H, W) of the background pixels `mask` (H, W) bool."""
    spread = float(shade[mask].std()) if mask.sum() > 1 else 0.0
    if spread < PLAIN_SPREAD:
        return "plain"
    weight = mask.to(shade)
    row_means = (shade * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1)  # (H,)
    col_means = (shade * weight).sum(dim=0) / weight.sum(dim=0).clamp_min(1)  # (W,)
    means = max(row_means, col_means, key=lambda m: float(m.var()))
    if float(means.var()) < BANDED * spread**2:  # rows and columns look alike: pixel noise
        return "noisy"
    # A gradient's means climb once (total variation = range), stripes' go up and down many times.
    steps = float(means.diff().abs().sum() / (means.max() - means.min()).clamp_min(1e-6))
    return "gradient" if steps < STRIPED_STEPS else "striped"


def judge(images: Tensor) -> list[Judgement]:
    """What each image (B, 3, H, W) in [0, 1] shows."""
    images = images.detach().float().cpu()
    labels, sure = colour_labels(images)  # (B, H, W) each
    border = torch.ones(labels.shape[1:], dtype=torch.bool)
    border[1:-1, 1:-1] = False
    background = torch.tensor(
        [_mode(label[border], w[border]) for label, w in zip(labels, sure, strict=True)]
    )  # (B,)
    # The shape colour: the surest other colour (anti-aliased edges are unsure), none without a background.
    others = [(label != bg) & (bg >= 0) for label, bg in zip(labels, background, strict=True)]
    colour = torch.tensor([_mode(label[o], w[o]) for label, w, o in zip(labels, sure, others, strict=True)])
    alpha = _fit(images, colour.clamp_min(0), background.clamp_min(0))[0][:, 0].clamp(max=1)  # (B, H, W)
    # Clipped bright shades of a noisy background fit a little shape colour: keep alpha next to the shape.
    is_background = labels == background[:, None, None]  # (B, H, W)
    alpha = alpha * F.max_pool2d((~is_background).to(alpha), 3, 1, 1)
    masks = (alpha > 0.5).to(alpha)  # (B, H, W)
    masks = masks * (F.avg_pool2d(masks, 3, 1, 1) * 9 - masks >= 2)  # without pixels of < 2 neighbours
    # Shade: each pixel's projection on the background colour, read two pixels or more away from the shape.
    palette = PALETTE[background.clamp_min(0)][..., None, None]  # (B, 3, 1, 1)
    shade = (images * palette).sum(dim=1) / (palette**2).sum(dim=1)  # (B, H, W)
    away = is_background & (F.max_pool2d(masks, 5, 1, 2) == 0)
    judgements = []
    for i in range(len(images)):
        name = NAMES[background[i]] if background[i] >= 0 else None
        bg_kind = _background_kind(shade[i], away[i]) if name else None
        kind, area = _shape_kind(masks[i]) if colour[i] >= 0 else (None, 0.0)
        radius = (area / AREA_PER_R2[kind]) ** 0.5 if kind else 0.0
        size = ("large" if radius > SIZE_THRESHOLD else "small") if kind else None
        judgements.append(Judgement(kind, NAMES[colour[i]] if colour[i] >= 0 else None, size, bg_kind, name))
    return judgements


def accuracy(images: Tensor, captions: list[str]) -> dict[str, float]:
    """Fraction of images whose judged colour, shape, size, background (kind) and background colour match
    their captions', and of those whose all five do ("all")."""
    scenes = [_scene(caption) for caption in captions]
    fields = ("colour", "shape", "size", "background", "background_colour")
    pairs = list(zip(judge(images), scenes, strict=True))
    scores = {f: sum(getattr(j, f) == getattr(s, f) for j, s in pairs) / len(pairs) for f in fields}
    return scores | {"all": sum(astuple(j) == astuple(s) for j, s in pairs) / len(pairs)}  # same field order


def _scene(prompt: str) -> scenes.Scene:
    scene = scenes.parse_caption(prompt)
    if scene is None:
        raise ValueError(
            f"prompt {prompt!r} is not a caption of the tiny model's world (rlft/world/scenes.py)"
        )
    return scene


def _prompt_colours(prompts: list[str] | None, count: int) -> tuple[Tensor, Tensor]:
    """Indices into NAMES of each prompt's shape and background colour, each (B,)."""
    if prompts is None or len(prompts) != count:
        raise ValueError(f"colour alignment needs a world caption per image ({count}), not {prompts!r:.200}")
    scenes = [_scene(prompt) for prompt in prompts]
    shape = torch.tensor([NAMES.index(s.colour) for s in scenes])
    background = torch.tensor([NAMES.index(s.background_colour) for s in scenes])
    return shape, background


def _relative_saturation(images: Tensor, shape: Tensor) -> Tensor:
    """Each pixel's saturation over the prompt's shape colour's, at most 1: (B, H, W)."""
    palette_saturation, _ = _saturation_value(PALETTE.to(images)[..., None, None])  # (8, 1, 1)
    saturation, _ = _saturation_value(images)
    return (saturation / palette_saturation[shape.to(images.device)]).clamp(max=1)


def _alignment(hits: Tensor, candidates: Tensor, blend: Tensor, coef: Tensor) -> Tensor:
    """Hits over candidates, (B, H, W) each, summed per image: (B,). A pixel that is a `blend` (in [0, 1]) of
    the prompt's two colours, alpha and beta `coef` (B, 2, H, W), counts as alpha / (alpha + beta) of a shape
    pixel, so clean anti-aliased edges cost nothing."""
    share = coef[:, 0] / coef.sum(dim=1).clamp_min(1e-6)  # (B, H, W)
    hits, candidates = blend * share + (1 - blend) * hits, blend * share + (1 - blend) * candidates
    return hits.sum(dim=(1, 2)) / candidates.sum(dim=(1, 2)).clamp_min(1)


def color_alignment(images: Tensor, prompts: list[str] | None = None) -> Tensor:
    """How much each image's shape has the prompt's shape colour, (B,) float32 in [0, 1]; 0 with no shape.

    Over the pixels not of the prompt's background colour: the share of the prompt's shape colour, each pixel
    counted by how sure its colour is and how saturated against the palette colour. Grey and dark pixels
    count fully against; blends of the prompt's two colours count as their share of the shape colour.
    """
    shape, background = _prompt_colours(prompts, len(images))
    images = images.detach().float()
    labels, sure = colour_labels(images)  # (B, H, W) each
    shape, background = shape.to(labels.device), background.to(labels.device)
    saturation, value = _saturation_value(images)
    grey = (saturation <= MIN_SATURATION) | (value <= MIN_VALUE)  # (B, H, W)
    candidates = (labels != background[:, None, None]) * (sure + grey)
    # A pixel of the shape colour scores sure * relative saturation (sure weighs it in both sums).
    hits = (labels == shape[:, None, None]) * sure**2 * _relative_saturation(images, shape)
    coef, residual = _fit(images, shape, background)
    near = [F.max_pool2d((labels == c[:, None, None]).to(images), 3, 1, 1) for c in (shape, background)]
    blend = ((residual < BLEND_RESIDUAL**2) & (value > MIN_VALUE)) * near[0] * near[1]
    return _alignment(hits, candidates, blend, coef).float()


def color_alignment_soft(images: Tensor, prompts: list[str] | None = None) -> Tensor:
    """color_alignment with soft colours, differentiable in the pixels: (B,) in [0, 1], the images' dtype.

    A pixel belongs to palette colour k by exp(-d_k^2 / 2 TEMPERATURE^2), d_k its hue distance, times a
    sigmoid gate for being bright and saturated enough to have a colour at all; it is a blend of the prompt's
    colours by exp(-residual / BLEND_RESIDUAL^2).
    """
    shape, background = (t.to(images.device) for t in _prompt_colours(prompts, len(images)))
    rows = torch.arange(len(images), device=images.device)
    saturation, value = _saturation_value(images)
    bright = torch.sigmoid((value - MIN_VALUE) / 0.02)  # (B, H, W)
    coloured = torch.sigmoid((saturation - MIN_SATURATION) / 0.03) * bright
    member = coloured[:, None] * torch.exp(-_squared_distances(images) / (2 * TEMPERATURE**2))  # (B, 8, H, W)
    not_background = 1 - member[rows, background]  # (B, H, W)
    candidates = not_background * (member.sum(dim=1) - member[rows, background] + 1 - coloured)
    hits = not_background * member[rows, shape] ** 2 * _relative_saturation(images, shape)
    coef, residual = _fit(images, shape, background)
    near = F.max_pool2d(member[rows, shape], 3, 1, 1) * F.max_pool2d(member[rows, background], 3, 1, 1)
    return _alignment(hits, candidates, torch.exp(-residual / BLEND_RESIDUAL**2) * bright * near, coef)
