"""The photo world: the toy world's shapes and irregular blobs cut from real photographs, pasted
on backgrounds cut from other photographs, with exact per-pixel ground truth.

It is the harder sibling of toy_world: flat colours make stage 1 (class-agnostic proposals) look
better than it is on camera images, so here every object's fill is a texture cut from a photo
(bricks, gravel, handwriting, fur, coffee, a retina), every background is a cut of another photo
(grass, a street scene, a cell, a rocket launch, the deep sky, ...), and lighting and camera
effects can be switched on. Grey photographs stay grey, so grey objects on grey backgrounds
occur: the case where colour does not separate an object from what lies behind it.

Scenes: 1 to toy_world.MAX_SHAPES objects, each one of PHOTO_SHAPES (toy_world.SHAPES plus
"blob", a smoothed random radial contour) with the toy world's sizes (circumradius 9 % to 24 %
of the short image side) and occlusion rule (later objects occlude earlier ones, each keeps at
least toy_world.MIN_VISIBLE_FRACTION of its area visible); objects cut from the same photo
never touch. Each texture cut is a random window of a random photo at a random scale (0.5x to
2x, relative to a 240-pixel short side, so larger renderings of a seed show the same scene),
rotation and brightness / contrast jitter (and per-channel gains for colour photos only).

Variants (VARIANTS), nested, so that they compare scene by scene:

- "texture": textures only, no lighting, no degradation;
- "shading": + a light direction: a linear shading across each object and a mild one over the
  background, and soft shadows (offset, blurred object masks) darkening what lies beneath each
  object (the background and earlier objects);
- "full": + defocus blur (Gaussian or disc, 0 to 1.5 px), Gaussian sensor noise and JPEG
  compression (quality 40 to 95).

A seed gives the same layout and textures in every variant (same labels and instances); the
effect strengths come from a second generator seeded from the seed alone, so "full" is exactly
the "shading" scene degraded, and "shading" the "texture" scene lit. Blur, noise and JPEG change
only the image: the ground truth stays the drawn masks. Seed ranges are toy_world's
(TRAIN_SEEDS, EVAL_SEEDS).

The photographs ship inside the scikit-image wheel (`skimage/data/`) and are read straight from
that folder (scikit-image itself is never imported; `pip install scikit-image`, or the `eval`
extra of this package). Only photographs whose scikit-image docstring states a licence that
allows use and redistribution are used (scikit-image 0.26, `skimage/data/_fetchers.py`):

Object textures (OBJECT_PHOTOS):
    brick.png           grey   CC0 (CC0Textures, Bricks25)
    gravel.png          grey   CC0 (CC0Textures, Gravel04)
    text.png            grey   public domain (Wikipedia, File:Corner.png)
    microaneurysms.png  grey   CC0 (Andreas Maier, HRF fundus image database)
    coffee.png          colour CC0 (photographer Rachel Michetti)
    chelsea.png         colour CC0 (photographer Stefan van der Walt)
    retina.jpg          colour CC0 1.0 (Mikael Haggstrom, Wikimedia Commons); centre only
Backgrounds (BACKGROUND_PHOTOS):
    grass.png           grey   CC0 (DeviantArt, linolafett, Grass-01)
    camera.png          grey   CC0 (photographer Lav Varshney)
    cell.png            grey   CC0 (Paul Mueller et al.)
    clock_motion.png    grey   public domain (photographer Stefan van der Walt)
    astronaut.png       colour public domain (NASA)
    rocket.jpg          colour public domain (SpaceX)
    hubble_deep_field.jpg colour public domain (NASA)

Left out for want of a stated licence (or not being photographs): moon, page, coins, ihc,
color, logo, horse, motorcycle_left/right, phantom, chessboard.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.toy_world import BACKGROUND, EVAL_SEEDS, SHAPES, TRAIN_SEEDS

__all__ = [
    "BACKGROUND_PHOTOS",
    "BLOB",
    "EVAL_SEEDS",
    "OBJECT_PHOTOS",
    "PHOTO_SHAPES",
    "TRAIN_SEEDS",
    "VARIANTS",
    "Photo",
    "PhotoScene",
    "PhotosMissingError",
    "blob_mask",
    "generate_scene",
    "photo_classes",
    "photo_folder",
    "read_photo",
]

BLOB = "blob"
PHOTO_SHAPES = (*SHAPES, BLOB)
VARIANTS = ("texture", "shading", "full")
INSTALL_HINT = "toy:photo needs the photographs of scikit-image: pip install scikit-image"

REFERENCE_SIDE = 240
"""Texture scales are relative to this short image side (a 480-pixel rendering of a seed shows
the same scene as its 240-pixel one, at twice the resolution)."""


@dataclass(frozen=True)
class Photo:
    """A photograph of scikit-image's data folder.

    file: its file name there; grey: single-channel (textures cut from it stay grey);
    region: (top, bottom, left, right) fractions of the photo that cuts come from;
    licence: as scikit-image's docstring states it.
    """

    file: str
    grey: bool
    licence: str
    region: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)

    @property
    def name(self) -> str:
        return self.file.rsplit(".", 1)[0]


OBJECT_PHOTOS = (
    Photo("brick.png", True, "CC0"),
    Photo("gravel.png", True, "CC0"),
    Photo("text.png", True, "public domain"),
    Photo("microaneurysms.png", True, "CC0"),
    Photo("coffee.png", False, "CC0"),
    Photo("chelsea.png", False, "CC0"),
    Photo("retina.jpg", False, "CC0 1.0", region=(0.2, 0.8, 0.2, 0.8)),
)
"""Photographs that object textures are cut from (disjoint from BACKGROUND_PHOTOS)."""
BACKGROUND_PHOTOS = (
    Photo("grass.png", True, "CC0"),
    Photo("camera.png", True, "CC0"),
    Photo("cell.png", True, "CC0"),
    Photo("clock_motion.png", True, "public domain"),
    Photo("astronaut.png", False, "public domain"),
    Photo("rocket.jpg", False, "public domain"),
    Photo("hubble_deep_field.jpg", False, "public domain"),
)
"""Photographs that backgrounds are cut from."""


class PhotosMissingError(RuntimeError):
    """scikit-image (whose data folder holds the photographs) is not installed, or a
    photograph is missing from it; the message says what to install."""


def photo_classes() -> list[str]:
    """Class names of the photo world: ["background", *toy_world.SHAPES, "blob"]."""
    return [BACKGROUND, *PHOTO_SHAPES]


@dataclass
class PhotoScene:
    """One generated photo-world scene.

    image: (H, W, 3) uint8 RGB.
    labels: (H, W) uint8, index into photo_classes() (0 = background).
    instances: (H, W) int32, 0 = background, k = the k-th object (1..K), visible pixels only.
    classes: K shape names; classes[k - 1] belongs to instance k.
    variant: one of VARIANTS; seed: the scene's seed.
    textures: K photo names (Photo.name), the photo each object's texture was cut from.
    background: the photo name of the background.
    areas: K full (unoccluded) pixel areas; instance k shows (instances == k).sum() of them.
    effects: the effect strengths applied (empty for "texture"), for inspection.
    """

    image: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    classes: list[str]
    variant: str
    seed: int
    textures: list[str] = field(default_factory=list)
    background: str = ""
    areas: list[int] = field(default_factory=list)
    effects: dict[str, float] = field(default_factory=dict)


def photo_folder() -> Path:
    """The data folder of the installed scikit-image, found without importing it (importing
    skimage pulls scipy and takes seconds); PhotosMissingError when it is not installed."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.origin:
        raise PhotosMissingError(INSTALL_HINT)
    folder = Path(spec.origin).parent / "data"
    if not folder.is_dir():
        raise PhotosMissingError(f"{INSTALL_HINT} (no data folder in {folder.parent})")
    return folder


@functools.cache
def read_photo(file: str) -> np.ndarray:
    """A photograph of scikit-image's data folder, decoded once per process: (H, W) uint8 for a
    grey photo, (H, W, 3) uint8 RGB for a colour one. Callers must not modify it."""
    path = photo_folder() / file
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise PhotosMissingError(f"{INSTALL_HINT} (cannot read {path})")
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)
    image.setflags(write=False)
    return image


@functools.cache
def _photo_region(photo: Photo) -> tuple[np.ndarray, float]:
    """The usable region of a photo (see Photo.region) and its mean grey level."""
    image = read_photo(photo.file)
    height, width = image.shape[:2]
    top, bottom, left, right = photo.region
    region = image[round(top * height) : round(bottom * height),
                   round(left * width) : round(right * width)]  # fmt: skip
    if photo.grey and region.ndim == 3:
        region = region[..., 0]
    region = np.ascontiguousarray(region)
    return region, float(region.mean())


@dataclass
class _Cut:
    """A texture cut: where in which photo, at what scale and rotation, with what jitter."""

    photo: Photo
    center: tuple[float, float]  # (x, y) in the photo region, pixels
    scale: float  # image pixels per photo pixel, at REFERENCE_SIDE
    angle: float  # radians
    gain: np.ndarray  # (3,) per-channel gain (equal channels for grey photos)
    contrast: float


def _draw_cut(
    rng: np.random.Generator, photos: tuple[Photo, ...], max_angle: float = np.pi
) -> _Cut:
    photo = photos[int(rng.integers(len(photos)))]
    region, _ = _photo_region(photo)
    height, width = region.shape[:2]
    center = (rng.uniform(0, width), rng.uniform(0, height))
    scale = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    angle = rng.uniform(-max_angle, max_angle)
    brightness = rng.uniform(0.7, 1.3)
    channels = rng.uniform(0.85, 1.15, 3)
    gain = brightness * (np.ones(3) if photo.grey else channels)
    return _Cut(photo, center, scale, angle, gain.astype(np.float32), rng.uniform(0.7, 1.3))


def _render_cut(
    cut: _Cut, anchor: tuple[float, float], box: tuple[int, int, int, int], side: int
) -> np.ndarray:
    """The cut's texture over image box (y0, y1, x0, x1), with the cut's photo point `center`
    at image point `anchor` (x, y): (h, w, 3) float32 in about [0, 255]."""
    region, mean = _photo_region(cut.photo)
    y0, y1, x0, x1 = box
    zoom = cut.scale * side / REFERENCE_SIDE
    cos, sin = np.cos(cut.angle) / zoom, np.sin(cut.angle) / zoom
    linear = np.array([[cos, -sin], [sin, cos]])  # image offset -> photo offset
    offset = np.asarray(cut.center) + linear @ (np.array([x0, y0]) - np.asarray(anchor))
    matrix = np.hstack([linear, offset[:, None]])
    texture = cv2.warpAffine(
        region,
        matrix,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    ).astype(np.float32)
    # (texture - mean) * contrast + mean, times the gains, in one pass; grey stays grey.
    scale = cut.gain * np.float32(cut.contrast)
    shift = cut.gain * np.float32(mean * (1.0 - cut.contrast))
    return (texture[..., None] if texture.ndim == 2 else texture) * scale + shift


def blob_mask(
    center: tuple[float, float],
    radius: float,
    angle: float,
    harmonics: np.ndarray,
    size: tuple[int, int],
) -> np.ndarray:
    """An irregular blob of circumradius `radius`: (H, W) bool, no anti-aliasing.

    Its contour is r(t) = 1 + sum_k a_k cos(k t + phase_k) over harmonics (K, 2) rows
    (a_k, phase_k) for k = 2, 3, ..., scaled so that its largest radius is `radius` and its
    smallest at least 35 % of that, rotated by `angle`."""
    t = np.linspace(0.0, 2 * np.pi, 96, endpoint=False)
    orders = np.arange(2, 2 + len(harmonics))[:, None]
    r = 1.0 + (harmonics[:, :1] * np.cos(orders * t + harmonics[:, 1:])).sum(axis=0)
    r = np.maximum(r / r.max(), 0.35) * radius
    points = np.stack([center[0] + r * np.cos(t + angle), center[1] + r * np.sin(t + angle)], 1)
    mask = np.zeros(size, dtype=np.uint8)
    cv2.fillPoly(mask, [points.round().astype(np.int32)], 1)
    return mask.astype(bool)


def _object_mask(
    rng: np.random.Generator, shape: str, size: tuple[int, int]
) -> tuple[np.ndarray, tuple[float, float], float]:
    """A random placement of `shape`: its (H, W) bool mask, center (x, y) and radius."""
    height, width = size
    radius = rng.uniform(0.09, 0.24) * min(height, width)
    center = (rng.uniform(radius * 0.6, width - radius * 0.6),
              rng.uniform(radius * 0.6, height - radius * 0.6))  # fmt: skip
    angle = rng.uniform(0, 2 * np.pi)
    if shape == BLOB:
        harmonics = np.stack([rng.uniform(0, 0.3, 4) / np.arange(1, 5) ** 0.5,
                              rng.uniform(0, 2 * np.pi, 4)], axis=1)  # fmt: skip
        return blob_mask(center, radius, angle, harmonics, size), center, radius
    return toy_world.shape_mask(shape, center, radius, angle, size), center, radius


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The tight box (y0, y1, x0, x1) of a non-empty mask, end-exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@dataclass
class _Object:
    shape: str
    mask: np.ndarray  # (H, W) bool, the full shape
    center: tuple[float, float]
    radius: float
    cut: _Cut
    area: int  # pixels of mask


def _layout(
    rng: np.random.Generator, height: int, width: int
) -> tuple[_Cut, list[_Object], np.ndarray]:
    """Background cut, objects in drawing order, and the (H, W) int32 instance map."""
    background = _draw_cut(rng, BACKGROUND_PHOTOS, max_angle=np.pi / 9)
    instances = np.zeros((height, width), dtype=np.int32)
    objects: list[_Object] = []
    wanted = int(rng.integers(1, toy_world.MAX_SHAPES + 1))
    for _ in range(wanted * 8):
        if len(objects) == wanted:
            break
        shape = PHOTO_SHAPES[int(rng.integers(len(PHOTO_SHAPES)))]
        mask, center, radius = _object_mask(rng, shape, (height, width))
        cut = _draw_cut(rng, OBJECT_PHOTOS)
        area = int(mask.sum())
        if area == 0:
            continue
        # Keep it only if every object (earlier ones and itself) stays visible enough, and it
        # does not touch an object cut from the same photo (the two would read as one region).
        trial = np.where(mask, len(objects) + 1, instances)
        if toy_world.hides_too_much(trial, [o.area for o in objects] + [area]):
            continue
        same = [o for o in objects if o.cut.photo == cut.photo]
        if same:
            near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            if any((near & o.mask).any() for o in same):
                continue
        instances = trial
        objects.append(_Object(shape, mask, center, radius, cut, area))
    return background, objects, instances


def _effect_strengths(seed: int, side: int) -> tuple[dict[str, float], np.random.Generator]:
    """Effect strengths of a seed (the same for every variant) and the generator that then
    draws the sensor noise."""
    rng = np.random.default_rng([seed, 0x9E3779B9])
    scale = side / REFERENCE_SIDE
    effects = {
        "light_angle": rng.uniform(0, 2 * np.pi),
        "object_shading": rng.uniform(0.15, 0.6),
        "background_shading": rng.uniform(0.05, 0.25),
        "shadow_offset_px": rng.uniform(0.015, 0.05) * side,
        "shadow_blur_px": rng.uniform(1.5, 5.0) * scale,
        "shadow_darkness": rng.uniform(0.2, 0.55),
        "blur_disc": float(rng.uniform() < 0.5),
        "blur_px": rng.uniform(0.0, 1.5),
        "noise_sigma": rng.uniform(0.0, 8.0),
        "jpeg_quality": float(rng.integers(40, 96)),
    }
    return effects, rng


def _linear_gain(
    box: tuple[int, int, int, int], origin: tuple[float, float], direction, strength, extent
) -> np.ndarray:
    """(h, w, 1) float32 gain 1 + strength * ((p - origin) . direction) / extent over box."""
    y0, y1, x0, x1 = box
    xs = (np.arange(x0, x1, dtype=np.float32) - origin[0]) * direction[0]
    ys = (np.arange(y0, y1, dtype=np.float32) - origin[1]) * direction[1]
    ramp = (ys[:, None] + xs[None, :]) * (strength / extent)
    return np.clip(1.0 + ramp, 0.25, 1.75)[..., None]


def _shadow(mask: np.ndarray, shift: tuple[float, float], blur: float) -> tuple[tuple, np.ndarray]:
    """The soft shadow of `mask` moved by shift (dx, dy): (box, (h, w) float32 in [0, 1])."""
    height, width = mask.shape
    y0, y1, x0, x1 = _box(mask)
    pad = int(np.ceil(abs(shift[0]) + abs(shift[1]) + 3 * blur)) + 1
    box = (max(y0 - pad, 0), min(y1 + pad, height), max(x0 - pad, 0), min(x1 + pad, width))
    by0, by1, bx0, bx1 = box
    crop = mask[by0:by1, bx0:bx1].astype(np.float32)
    moved = cv2.warpAffine(crop, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]),
                           (bx1 - bx0, by1 - by0), flags=cv2.INTER_LINEAR)  # fmt: skip
    return box, cv2.GaussianBlur(moved, (0, 0), blur)


def generate_scene(
    seed: int, height: int = 240, width: int = 320, variant: str = "full"
) -> PhotoScene:
    """The photo-world scene of `seed` in `variant` (one of VARIANTS), height x width pixels;
    deterministic per (seed, height, width, variant). PhotosMissingError without scikit-image."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown photo-world variant {variant!r}; known: {', '.join(VARIANTS)}")
    side = min(height, width)
    rng = np.random.default_rng(seed)
    background_cut, objects, instances = _layout(rng, height, width)
    effects, noise_rng = _effect_strengths(seed, side)
    lit = variant != "texture"
    direction = (np.cos(effects["light_angle"]), np.sin(effects["light_angle"]))

    whole = (0, height, 0, width)
    image = _render_cut(background_cut, (width / 2, height / 2), whole, side)
    if lit:
        image *= _linear_gain(
            whole, (width / 2, height / 2), direction, effects["background_shading"], side / 2
        )
    for obj in objects:
        if lit:  # the shadow falls away from the light, on whatever lies beneath
            shift = (-direction[0] * effects["shadow_offset_px"],
                     -direction[1] * effects["shadow_offset_px"])  # fmt: skip
            (y0, y1, x0, x1), soft = _shadow(obj.mask, shift, effects["shadow_blur_px"])
            image[y0:y1, x0:x1] *= 1.0 - effects["shadow_darkness"] * soft[..., None]
        box = _box(obj.mask)
        y0, y1, x0, x1 = box
        texture = _render_cut(obj.cut, obj.center, box, side)
        if lit:
            texture *= _linear_gain(
                box, obj.center, direction, effects["object_shading"], obj.radius
            )
        np.copyto(image[y0:y1, x0:x1], texture, where=obj.mask[y0:y1, x0:x1, None])

    if variant == "full":
        sigma = effects["blur_px"]
        if effects["blur_disc"] and sigma >= 0.5:
            size = 2 * int(np.ceil(sigma)) + 1
            yy, xx = np.mgrid[:size, :size] - size // 2
            disc = ((xx**2 + yy**2) <= sigma**2 + 0.25).astype(np.float32)
            image = cv2.filter2D(image, -1, disc / disc.sum(), borderType=cv2.BORDER_REFLECT_101)
        elif not effects["blur_disc"] and sigma > 0.05:
            image = cv2.GaussianBlur(image, (0, 0), sigma)
        if effects["noise_sigma"] > 0:
            noise = noise_rng.standard_normal(image.shape, dtype=np.float32)
            image += noise * np.float32(effects["noise_sigma"])
    pixels = np.rint(np.clip(image, 0, 255, out=image), out=image).astype(np.uint8)
    if variant == "full":
        quality = int(effects["jpeg_quality"])
        ok, data = cv2.imencode(".jpg", pixels[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
            raise RuntimeError("JPEG encoding failed")
        pixels = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    lut = np.array([0] + [PHOTO_SHAPES.index(o.shape) + 1 for o in objects], dtype=np.uint8)
    used = {
        "texture": (),
        "shading": ("light_angle", "object_shading", "background_shading", "shadow_offset_px",
                    "shadow_blur_px", "shadow_darkness"),
    }  # fmt: skip
    keys = used.get(variant, tuple(effects))
    return PhotoScene(
        image=pixels,
        labels=lut[instances],
        instances=instances,
        classes=[o.shape for o in objects],
        variant=variant,
        seed=seed,
        textures=[o.cut.photo.name for o in objects],
        background=background_cut.photo.name,
        areas=[o.area for o in objects],
        effects={key: float(effects[key]) for key in keys},
    )
