"""The toy world: colored shapes on textured backgrounds, with exact per-pixel ground truth.

Every scene is a pure function of its seed. It shows 1 to MAX_SHAPES shapes (SHAPES) in flat,
slightly shaded colors (COLORS), of varied size (circumradius 9% to 24% of the short image side)
and rotation, drawn one over the other: later shapes occlude earlier ones, every shape keeps at
least MIN_VISIBLE_FRACTION of its area visible, and shapes of one color never touch. The
background is a texture (BACKGROUNDS) of muted, low-saturation colors, so that no background is
mistaken for a shape color. A ring's hole shows the background. Shapes are drawn without
anti-aliasing, so the ground truth is exact per pixel.

Ground truth comes in two label spaces over the same pixels: shape names (`shape_classes()`)
and color names (`color_classes()`); index 0 is "background" in both.

Seed ranges: seeds in TRAIN_SEEDS (0 to 999_999) are for training (the tiny CLIP); seeds in
EVAL_SEEDS (from 1_000_000) are held out for evaluation and never used in training.

Seen / unseen split, for zero-shot style evaluation as in the paper's VOC 15/5 and COCO-Stuff
156/15 settings: anything the project trains on segmentation labels (a learned proposal network,
the "trained classes" of the ensemble) may only use SEEN_SHAPES / SEEN_COLORS; UNSEEN_SHAPES /
UNSEEN_COLORS are reported separately (unseen mIoU, hIoU). "background" is always seen. The
tiny CLIP itself is trained on captions of all names, like a real CLIP trained on web captions.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BACKGROUND = "background"
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLORS = ("red", "green", "blue", "yellow", "orange", "purple", "white")
BACKGROUNDS = ("plain", "noise", "stripes", "gradient", "checkerboard")

UNSEEN_SHAPES = ("star", "cross")
UNSEEN_COLORS = ("orange", "purple")
SEEN_SHAPES = tuple(s for s in SHAPES if s not in UNSEEN_SHAPES)
SEEN_COLORS = tuple(c for c in COLORS if c not in UNSEEN_COLORS)

TRAIN_SEEDS = range(0, 1_000_000)
EVAL_SEEDS = range(1_000_000, 2_000_000)

# Caption templates of the toy world. The tiny CLIP (tools/train_tiny_clip.py) trains on captions
# made from TRAIN_TEMPLATES and TRAIN_PAIR_TEMPLATES only.
TRAIN_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a {}.",
    "{}",
    "the {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a small {}.",
    "a big {}.",
    "a {} in the image.",
    "a photo showing a {}.",
    "an example of a {}.",
    "one {}.",
    "look, a {}!",
)
"""Templates with one slot, filled with a shape, a color, "<color> <shape>" or "background"."""
TRAIN_PAIR_TEMPLATES = ("a {shape} colored {color}.", "a photo of a {shape} in {color}.")
"""Templates with a shape slot and a color slot."""
HELD_OUT_TEMPLATES = (
    "a rendering of a {}.",
    "there is a {} here.",
    "a cropped photo of the {}.",
    "itap of a {}.",
    "a good photo of a {}.",
    "this is a {}.",
)
"""Never used in training: the zero-shot check with unseen prompts uses them."""

MAX_SHAPES = 6
MIN_VISIBLE_FRACTION = 0.4
"""Least visible share of a shape's own area after occlusion by later shapes."""

COLOR_RGB = {
    "red": (215, 35, 35),
    "green": (40, 175, 60),
    "blue": (35, 70, 215),
    "yellow": (240, 215, 35),
    "orange": (245, 135, 25),
    "purple": (140, 45, 175),
    "white": (245, 245, 245),
}
"""Nominal RGB of each shape color; scenes jitter it by up to COLOR_JITTER per channel."""
COLOR_JITTER = 12


def hides_too_much(instances: np.ndarray, areas: list[int]) -> bool:
    """True when some shape k of an instance map (H, W) int, k = 1..len(areas), shows less than
    MIN_VISIBLE_FRACTION of its full area areas[k - 1] (pixels, before occlusion)."""
    visible = np.bincount(instances.ravel(), minlength=len(areas) + 1)[1 : len(areas) + 1]
    return bool((visible < MIN_VISIBLE_FRACTION * np.asarray(areas)).any())


def shape_classes() -> list[str]:
    """Class names of the shape label space: ["background", *SHAPES]."""
    return [BACKGROUND, *SHAPES]


def color_classes() -> list[str]:
    """Class names of the color label space: ["background", *COLORS]."""
    return [BACKGROUND, *COLORS]


@dataclass
class ToyScene:
    """One generated scene.

    image: (H, W, 3) uint8 RGB.
    shape_labels: (H, W) uint8, index into shape_classes() (0 = background).
    color_labels: (H, W) uint8, index into color_classes() (0 = background).
    instances: (H, W) int32, 0 = background, k = the k-th shape (1..K), visible pixels only.
    shapes, colors: K names each; shapes[k - 1] and colors[k - 1] belong to instance k.
    background: the texture kind, one of BACKGROUNDS.
    """

    image: np.ndarray
    shape_labels: np.ndarray
    color_labels: np.ndarray
    instances: np.ndarray
    shapes: list[str]
    colors: list[str]
    background: str
    seed: int


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A random low-saturation, mid-brightness RGB color, (3,) float in [0, 255]."""
    hsv = np.array(
        [[[rng.uniform(0, 180), rng.uniform(0, 70), rng.uniform(35, 165)]]], dtype=np.float32
    )
    hsv_u8 = np.clip(hsv, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv_u8, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """A background texture of the given kind: (H, W, 3) float32 in [0, 255]."""
    first, second = _muted_color(rng), _muted_color(rng)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along = xs * np.cos(angle) + ys * np.sin(angle)
    if kind == "plain":
        image = np.broadcast_to(first, (height, width, 3)).copy()
        image += rng.normal(0, 2, (height, width, 1))
    elif kind == "noise":
        image = first + rng.normal(0, rng.uniform(8, 25), (height, width, 3))
    elif kind == "stripes":
        period = rng.uniform(6, 30)
        on = (np.floor(along / (period / 2)) % 2)[..., None]
        image = first * on + second * (1 - on)
    elif kind == "gradient":
        t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        image = first * t[..., None] + second * (1 - t[..., None])
    elif kind == "checkerboard":
        cell = int(rng.integers(8, 33))
        on = ((ys // cell + xs // cell) % 2)[..., None]
        image = first * on + second * (1 - on)
    else:
        raise ValueError(f"unknown background kind {kind!r}; known: {BACKGROUNDS}")
    return image.astype(np.float32)


def _polygon(radius: float, angle: float, center: tuple[float, float], points) -> np.ndarray:
    """Unit-radius points (N, 2) scaled, rotated by `angle` radians and moved to `center`."""
    points = np.asarray(points, dtype=np.float64) * radius
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (points @ rotation.T + np.asarray(center)).round().astype(np.int32)


def shape_mask(
    shape: str, center: tuple[float, float], radius: float, angle: float, size: tuple[int, int]
) -> np.ndarray:
    """Filled shape of circumradius `radius` pixels: (H, W) bool, no anti-aliasing."""
    mask = np.zeros(size, dtype=np.uint8)
    cx, cy = center
    if shape in ("circle", "ring"):
        cv2.circle(mask, (round(cx), round(cy)), round(radius), 1, thickness=-1)
        if shape == "ring":
            cv2.circle(mask, (round(cx), round(cy)), round(radius * 0.55), 0, thickness=-1)
        return mask.astype(bool)
    if shape == "square":
        unit = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        points = [(x / np.sqrt(2), y / np.sqrt(2)) for x, y in unit]
    elif shape == "triangle":
        points = [(np.cos(a), np.sin(a)) for a in np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
    elif shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        points = [
            (r * np.cos(a), r * np.sin(a)) for a, r in zip(angles, [1.0, 0.42] * 5, strict=True)
        ]
    elif shape == "cross":
        a, b = 0.3, 1.0
        points = [
            (-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
            (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a),
        ]  # fmt: skip
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    cv2.fillPoly(mask, [_polygon(radius, angle, center, points)], 1)
    return mask.astype(bool)


def _shade(rng: np.random.Generator, color: str, height: int, width: int) -> np.ndarray:
    """Jittered flat color with a soft linear shading and fine noise: (H, W, 3) float32."""
    base = np.asarray(COLOR_RGB[color], dtype=np.float32)
    base = base + rng.uniform(-COLOR_JITTER, COLOR_JITTER, 3)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xs * np.cos(angle) + ys * np.sin(angle)) / max(height, width)
    gain = 1.0 + rng.uniform(0.0, 0.12) * (ramp - ramp.mean())
    return base * gain[..., None] + rng.normal(0, 3, (height, width, 1)).astype(np.float32)


def generate_scene(seed: int, height: int = 240, width: int = 320) -> ToyScene:
    """The scene of `seed` (deterministic: same seed and size, same arrays), height x width px.

    See the module docstring for the seed ranges of training and held-out evaluation scenes.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    image = _background(rng, kind, height, width)
    instances = np.zeros((height, width), dtype=np.int32)
    full_masks: list[np.ndarray] = []
    shapes: list[str] = []
    colors: list[str] = []
    side = min(height, width)
    wanted = int(rng.integers(1, MAX_SHAPES + 1))
    for _ in range(wanted * 8):
        if len(shapes) == wanted:
            break
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = COLORS[int(rng.integers(len(COLORS)))]
        radius = rng.uniform(0.09, 0.24) * side
        center = (rng.uniform(radius * 0.6, width - radius * 0.6),
                  rng.uniform(radius * 0.6, height - radius * 0.6))  # fmt: skip
        mask = shape_mask(shape, center, radius, rng.uniform(0, 2 * np.pi), (height, width))
        # Draw it only if it leaves enough of every earlier shape visible and does not touch a
        # shape of its own color (the two would look like one region).
        trial = np.where(mask, len(shapes) + 1, instances)
        if hides_too_much(trial, [int(full.sum()) for full in [*full_masks, mask]]):
            continue
        near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if any(
            c == color and (near & full).any() for c, full in zip(colors, full_masks, strict=True)
        ):
            continue
        instances = trial
        full_masks.append(mask)
        shapes.append(shape)
        colors.append(color)
        image[mask] = _shade(rng, color, height, width)[mask]

    shape_lut = np.array([0] + [SHAPES.index(s) + 1 for s in shapes], dtype=np.uint8)
    color_lut = np.array([0] + [COLORS.index(c) + 1 for c in colors], dtype=np.uint8)
    return ToyScene(
        image=np.clip(image, 0, 255).round().astype(np.uint8),
        shape_labels=shape_lut[instances],
        color_labels=color_lut[instances],
        instances=instances,
        shapes=shapes,
        colors=colors,
        background=kind,
        seed=seed,
    )
