"""Readers of segmentation datasets for evaluation: the toy world, the photo world, and the
converted folder layout that ADE20K-150, Pascal VOC, Pascal Context-59 and COCO-Stuff take after
their usual conversion (detectron2's / mmsegmentation's preparation scripts).

Folder layout read by FolderDataset (folder and file names configurable):

    root/
      classes.txt          one class name per line; line i (from 0) names label value i
      images/NAME.jpg      RGB images (.jpg, .jpeg or .png)
      labels/NAME.png      single-channel PNG (8 or 16 bit, or palette-indexed as in VOC), same
                           size as its image; value = class index, IGNORE_INDEX (255) = ignore
      instances/NAME.png   optional: single-channel PNG (8 or 16 bit, or palette-indexed), same
                           size as its image; 0 = no object, k >= 1 = object k; in 8-bit files
                           255 = void (VOC's object boundaries), left out of the proposal figures

An image, its label and its instance map share the file stem (NAME). By default every image is a
sample and needs its label; listed by labels (list_by="labels"), every label is a sample and needs
its image, and unlabelled images are left out (dataset_protocols.py reads the reference's
layouts so). With instances/, every sample needs its instance map, and evaluation adds
class-agnostic proposal figures (proposal_metrics.py). A folder of images and instances only (no
labels/, no classes.txt) is read with label_dir=None: samples without labels, class_names [], for
proposal figures only (your own photos with object masks). Every reader yields `Sample`s and
exposes `class_names` and `ignore_index`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ovseg_ros.engine import photo_world, toy_world
from ovseg_ros.engine.metrics import IGNORE_INDEX

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LIST_BY = ("images", "labels")
"""What FolderDataset lists its samples by: every image, or every label."""
VOID_INSTANCE = -1
"""Value of Sample.instances for pixels that belong to no object and to no background either
(object boundaries): left out of the proposal figures."""
_EVAL_100 = range(toy_world.EVAL_SEEDS.start, toy_world.EVAL_SEEDS.start + 100)


class DatasetError(ValueError):
    """A dataset file or folder is missing or malformed; the message names it."""


@dataclass
class Sample:
    """One evaluation sample.

    image: (H, W, 3) uint8 RGB; label: (H, W) int64, class index or the dataset's ignore_index,
    or None for a dataset of instances only; name: identifies the sample (file stem, or
    "seed-N" for the generated worlds); instances: (H, W) int32, 0 = no object, k >= 1 = object
    k, VOID_INSTANCE = left out; None when the dataset has no instance maps.
    """

    image: np.ndarray
    label: np.ndarray | None
    name: str
    instances: np.ndarray | None = None


class ToyWorldDataset:
    """Toy-world scenes as a dataset in one of its two label spaces.

    label_space: "shape" (class_names = toy_world.shape_classes()) or "color"
    (toy_world.color_classes()). seeds: scene seeds; the default is the first 100 held-out
    evaluation seeds (toy_world.EVAL_SEEDS). The toy world has no ignored pixels.
    """

    def __init__(
        self,
        label_space: str = "shape",
        seeds: Sequence[int] = _EVAL_100,
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
        return Sample(
            image=scene.image,
            label=labels.astype(np.int64),
            name=f"seed-{seed}",
            instances=scene.instances,
        )

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


class PhotoWorldDataset:
    """Photo-world scenes (photo_world.py) as a dataset, with labels and instances.

    variant: one of photo_world.VARIANTS ("texture", "shading", "full"); seeds: scene seeds,
    by default the first 100 held-out evaluation seeds. class_names = photo_world.photo_classes().
    unseen_classes: the toy world's unseen shapes plus "blob", the same split as toy:shape (so
    seen / unseen figures compare across the two worlds) and "blob", which nothing this project
    trains (the tiny CLIP, the toy MaskFormer) has ever seen. Constructing it checks that the
    photographs can be read (photo_world.PhotosMissingError otherwise).
    """

    def __init__(
        self,
        variant: str = "full",
        seeds: Sequence[int] = _EVAL_100,
        height: int = 240,
        width: int = 320,
    ):
        if variant not in photo_world.VARIANTS:
            raise ValueError(
                f"variant must be one of {', '.join(photo_world.VARIANTS)}, got {variant!r}"
            )
        photo_world.photo_folder()  # fail now, not at the first sample
        self.variant = variant
        self.seeds = list(seeds)
        self.height = height
        self.width = width
        self.ignore_index = IGNORE_INDEX
        self.class_names = photo_world.photo_classes()
        self.unseen_classes = [*toy_world.UNSEEN_SHAPES, photo_world.BLOB]

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> Sample:
        seed = self.seeds[index]
        scene = photo_world.generate_scene(seed, self.height, self.width, self.variant)
        return Sample(
            image=scene.image,
            label=scene.labels.astype(np.int64),
            name=f"seed-{seed}",
            instances=scene.instances,
        )

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

    root: dataset folder; image_dir, label_dir, class_file, instance_dir: paths relative to
    root (e.g. image_dir="images/validation", label_dir="annotations_detectron2/validation" for
    ADE20K as detectron2 prepares it). class_names: the class list itself (label value i =
    class_names[i]), read instead of class_file when given. label_dir=None reads images and
    instances only (no class file: class_names [], every Sample.label None); instance_dir is
    read when it exists (it must, with label_dir=None).
    list_by: "images" (every image in image_dir is a sample and needs its label) or "labels"
    (every label_dir/NAME.png is a sample, its image is image_dir/NAME + image_suffix; other
    images are left out, as in VOC, whose JPEGImages/ holds far more images than its val split
    labels). Missing folders, unreadable files, images without a label or instance map, labels
    without an image, labels or instance maps of another size than their image, and label
    values beyond the class list raise DatasetError naming the file (the last three when the
    sample is read).
    """

    def __init__(
        self,
        root: str | Path,
        image_dir: str = "images",
        label_dir: str | None = "labels",
        class_file: str = "classes.txt",
        ignore_index: int = IGNORE_INDEX,
        instance_dir: str = "instances",
        class_names: Sequence[str] | None = None,
        list_by: str = "images",
        image_suffix: str = ".jpg",
    ):
        if list_by not in LIST_BY:
            raise ValueError(f"list_by must be one of {', '.join(LIST_BY)}, got {list_by!r}")
        if list_by == "labels" and label_dir is None:
            raise ValueError("list_by='labels' needs a label_dir")
        self.root = Path(root)
        folders = [self.root, self.root / image_dir]
        if label_dir is not None:
            folders.append(self.root / label_dir)
        else:
            folders.append(self.root / instance_dir)
        for folder in folders:
            if not folder.is_dir():
                raise DatasetError(f"dataset folder not found: {folder}")
        self.ignore_index = ignore_index
        if label_dir is None:
            self.class_names: list[str] = []
        else:
            if class_names is None:
                self.class_names = read_class_names(self.root / class_file)
                source = str(self.root / class_file)
            else:
                self.class_names = list(class_names)
                source = "the given class list"
            if ignore_index < len(self.class_names):
                raise DatasetError(
                    f"ignore index {ignore_index} collides with a class index: "
                    f"{source} lists {len(self.class_names)} classes"
                )
        self.labels: list[Path] | None = None
        if list_by == "labels":
            self.labels = sorted(
                p for p in (self.root / label_dir).iterdir() if p.suffix.lower() == ".png"
            )
            if not self.labels:
                raise DatasetError(f"no labels (.png) in {self.root / label_dir}")
            self.images = [self.root / image_dir / f"{p.stem}{image_suffix}" for p in self.labels]
            for label, image in zip(self.labels, self.images, strict=True):
                if not image.is_file():
                    raise DatasetError(f"no image for label {label}: expected {image}")
        else:
            self.images = sorted(
                p for p in (self.root / image_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not self.images:
                raise DatasetError(
                    f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.root / image_dir}"
                )
            if label_dir is not None:
                self.labels = [self.root / label_dir / f"{p.stem}.png" for p in self.images]
                for image, label in zip(self.images, self.labels, strict=True):
                    if not label.is_file():
                        raise DatasetError(f"no label for image {image}: expected {label}")
        self.instances: list[Path] | None = None
        if (self.root / instance_dir).is_dir():
            self.instances = [self.root / instance_dir / f"{p.stem}.png" for p in self.images]
            for image, instances in zip(self.images, self.instances, strict=True):
                if not instances.is_file():
                    raise DatasetError(f"no instance map for image {image}: expected {instances}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        image_path = self.images[index]
        image = _read_image(image_path)
        label = None
        if self.labels is not None:
            label_path = self.labels[index]
            label = _read_label(label_path)
            _check_size(label, label_path, "label", image, image_path)
            beyond = (label >= len(self.class_names)) & (label != self.ignore_index)
            if beyond.any():
                values = sorted(int(v) for v in np.unique(label[beyond]))
                raise DatasetError(
                    f"label {label_path} has values {values} beyond the "
                    f"{len(self.class_names)} classes of {self.root} (valid: "
                    f"0..{len(self.class_names) - 1} and {self.ignore_index} = ignore)"
                )
        instances = None
        if self.instances is not None:
            instances = _read_instances(self.instances[index])
            _check_size(instances, self.instances[index], "instance map", image, image_path)
        return Sample(image=image, label=label, name=image_path.stem, instances=instances)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


def _check_size(
    array: np.ndarray, path: Path, kind: str, image: np.ndarray, image_path: Path
) -> None:
    """DatasetError when a label or instance map differs in size from its image."""
    if array.shape != image.shape[:2]:
        raise DatasetError(
            f"{kind} {path} is {array.shape[1]}x{array.shape[0]} but its image "
            f"{image_path} is {image.shape[1]}x{image.shape[0]} (width x height)"
        )


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


SINGLE_CHANNEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
"""PIL modes of the single-channel PNGs read as label and instance maps (8 bit, palette, 16 bit)."""


def _read_single_channel(path: Path, kind: str, holding: str) -> tuple[str, np.ndarray]:
    """A single-channel PNG -> (its PIL mode, (H, W) values; palette PNGs give their indices),
    or DatasetError naming the file, what kind of map it is and what its values hold."""
    image = _open(path, kind)
    if image.mode not in SINGLE_CHANNEL_MODES:
        raise DatasetError(
            f"{kind} {path} has mode {image.mode}; a single-channel ({holding}) PNG is needed"
        )
    return image.mode, np.asarray(image)


def _read_label(path: Path) -> np.ndarray:
    """A single-channel label PNG -> (H, W) int64; palette PNGs give their indices."""
    return _read_single_channel(path, "label", "class index")[1].astype(np.int64)


def _read_instances(path: Path) -> np.ndarray:
    """A single-channel instance PNG -> (H, W) int32: 0 = no object, k = object k; in 8-bit
    (and palette) files 255 becomes VOID_INSTANCE."""
    mode, values = _read_single_channel(path, "instance map", "object id")
    instances = values.astype(np.int32)
    if mode in ("L", "P"):
        instances[instances == 255] = VOID_INSTANCE
    elif instances.min(initial=0) < 0:
        raise DatasetError(f"instance map {path} has negative object ids")
    return instances
