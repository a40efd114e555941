"""Readers of semantic segmentation datasets for evaluation: the toy world, and the converted
folder layout that ADE20K-150, Pascal VOC, Pascal Context-59 and COCO-Stuff take after their
usual conversion (detectron2's / mmsegmentation's preparation scripts).

Folder layout read by FolderDataset (folder and file names configurable):

    root/
      classes.txt        one class name per line; line i (from 0) names label value i
      images/NAME.jpg    RGB images (.jpg, .jpeg or .png)
      labels/NAME.png    single-channel PNG (8 or 16 bit, or palette-indexed as in VOC), same
                         size as its image; value = class index, IGNORE_INDEX (255) = ignore

An image and its label share the file stem (NAME). Every reader yields `Sample`s and exposes
`class_names` and `ignore_index`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.metrics import IGNORE_INDEX

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DatasetError(ValueError):
    """A dataset file or folder is missing or malformed; the message names it."""


@dataclass
class Sample:
    """One evaluation sample.

    image: (H, W, 3) uint8 RGB; label: (H, W) int64, class index or the dataset's ignore_index;
    name: identifies the sample (file stem, or "seed-N" for the toy world).
    """

    image: np.ndarray
    label: np.ndarray
    name: str


class ToyWorldDataset:
    """Toy-world scenes as a dataset in one of its two label spaces.

    label_space: "shape" (class_names = toy_world.shape_classes()) or "color"
    (toy_world.color_classes()). seeds: scene seeds; the default is the first 100 held-out
    evaluation seeds (toy_world.EVAL_SEEDS). The toy world has no ignored pixels.
    """

    def __init__(
        self,
        label_space: str = "shape",
        seeds: Sequence[int] = range(toy_world.EVAL_SEEDS.start, toy_world.EVAL_SEEDS.start + 100),
        height: int = 240,
        width: int = 320,
    ):
        if label_space not in ("shape", "color"):
            raise ValueError(f"label_space must be 'shape' or 'color', got {label_space!r}")
        self.label_space = label_space
        self.seeds = list(seeds)
        self.height = height
        self.width = width
        self.ignore_index = IGNORE_INDEX
        self.class_names = (
            toy_world.shape_classes() if label_space == "shape" else toy_world.color_classes()
        )
        unseen = toy_world.UNSEEN_SHAPES if label_space == "shape" else toy_world.UNSEEN_COLORS
        self.unseen_classes = list(unseen)

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> Sample:
        seed = self.seeds[index]
        scene = toy_world.generate_scene(seed, self.height, self.width)
        labels = scene.shape_labels if self.label_space == "shape" else scene.color_labels
        return Sample(image=scene.image, label=labels.astype(np.int64), name=f"seed-{seed}")

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


def read_class_names(path: Path) -> list[str]:
    """Class names from a text file, one per line (trailing blank lines allowed)."""
    if not path.is_file():
        raise DatasetError(f"class-name file not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names:
        raise DatasetError(f"class-name file lists no classes: {path}")
    for number, name in enumerate(names, start=1):
        if not name:
            raise DatasetError(f"blank class name on line {number} of {path}")
    return names


class FolderDataset:
    """The converted folder layout described in the module docstring.

    root: dataset folder; image_dir, label_dir, class_file: paths relative to root (e.g.
    image_dir="images/validation", label_dir="annotations_detectron2/validation" for ADE20K as
    detectron2 prepares it). Missing folders, unreadable files, images without a label, labels
    of another size than their image, and label values beyond the class list raise DatasetError
    naming the file (the last two when the sample is read).
    """

    def __init__(
        self,
        root: str | Path,
        image_dir: str = "images",
        label_dir: str = "labels",
        class_file: str = "classes.txt",
        ignore_index: int = IGNORE_INDEX,
    ):
        self.root = Path(root)
        for folder in (self.root, self.root / image_dir, self.root / label_dir):
            if not folder.is_dir():
                raise DatasetError(f"dataset folder not found: {folder}")
        self.class_names = read_class_names(self.root / class_file)
        self.ignore_index = ignore_index
        if ignore_index < len(self.class_names):
            raise DatasetError(
                f"ignore index {ignore_index} collides with a class index: "
                f"{self.root / class_file} lists {len(self.class_names)} classes"
            )
        self.images = sorted(
            p for p in (self.root / image_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.images:
            raise DatasetError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.root / image_dir}"
            )
        self.labels = [self.root / label_dir / f"{p.stem}.png" for p in self.images]
        for image, label in zip(self.images, self.labels, strict=True):
            if not label.is_file():
                raise DatasetError(f"no label for image {image}: expected {label}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path = self.images[index], self.labels[index]
        image = _read_image(image_path)
        label = _read_label(label_path)
        if label.shape != image.shape[:2]:
            raise DatasetError(
                f"label {label_path} is {label.shape[1]}x{label.shape[0]} but its image "
                f"{image_path} is {image.shape[1]}x{image.shape[0]} (width x height)"
            )
        beyond = (label >= len(self.class_names)) & (label != self.ignore_index)
        if beyond.any():
            values = sorted(int(v) for v in np.unique(label[beyond]))
            raise DatasetError(
                f"label {label_path} has values {values} beyond the {len(self.class_names)} "
                f"classes of {self.root} (valid: 0..{len(self.class_names) - 1} and "
                f"{self.ignore_index} = ignore)"
            )
        return Sample(image=image, label=label, name=image_path.stem)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


def _open(path: Path, kind: str) -> Image.Image:
    """Opens and decodes an image file, or raises DatasetError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {kind} {path}: {exc}") from exc


def _read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB."""
    return np.asarray(_open(path, "image").convert("RGB"))


def _read_label(path: Path) -> np.ndarray:
    """A single-channel label PNG -> (H, W) int64; palette PNGs give their indices."""
    image = _open(path, "label")
    if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise DatasetError(
            f"label {path} has mode {image.mode}; a single-channel (class index) PNG is needed"
        )
    return np.asarray(image).astype(np.int64)
