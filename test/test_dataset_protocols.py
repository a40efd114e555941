"""Named evaluation protocols of the reference (zsseg.baseline): class lists, splits, resize, and
tiny synthetic datasets in each protocol's folder layout; FolderDataset listed by its labels."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg_ros.engine.dataset_protocols import (
    DATASET_PROTOCOLS,
    dataset_protocol,
    open_protocol_dataset,
)
from ovseg_ros.engine.datasets import DatasetError, FolderDataset
from ovseg_ros.engine.metrics import ConfusionMatrix, compute_metrics

# name -> (classes, unseen classes, image folder, label folder, short side, long-side cap), as the
# reference's registrations, preparation scripts and configs have them.
EXPECTED = {
    "ade20k-150": (150, 0, "images/validation", "annotations_detectron2/validation", 512, 2048),
    "pcontext-59": (59, 0, "val/image", "val/label", 512, 2048),
    "voc-20": (20, 0, "JPEGImages", "annotations_detectron2/val", 512, 2048),
    "voc-15": (20, 5, "JPEGImages", "annotations_detectron2/val", 512, 2048),
    "coco-stuff-171": (171, 0, "val2017", "stuffthingmaps_detectron2/val2017", 640, 2560),
    "coco-stuff-156": (171, 15, "val2017", "stuffthingmaps_detectron2/val2017", 640, 2560),
}


def write_layout(
    root: Path,
    image_dir: str,
    label_dir: str,
    labels: dict[str, np.ndarray],
    unlabelled: tuple[str, ...] = (),
    image_suffix: str = ".jpg",
) -> None:
    """Writes root/image_dir/NAME + image_suffix for every labelled and unlabelled NAME, and
    root/label_dir/NAME.png (8-bit) for every labelled one; images are 3 x 4 (H x W)."""
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / label_dir).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sorted([*labels, *unlabelled])):
        image = np.full((3, 4, 3), (20 * i, 100, 200), dtype=np.uint8)
        Image.fromarray(image).save(root / image_dir / f"{name}{image_suffix}")
    for name, label in labels.items():
        Image.fromarray(label.astype(np.uint8)).save(root / label_dir / f"{name}.png")


def label_with(num_classes: int) -> np.ndarray:
    """(3, 4) labels: the first and last class, class 1, and 255 (ignore) pixels."""
    last = num_classes - 1
    return np.array([[0, 1, last, 255], [0, 0, last, last], [255, 255, 1, 1]])


def test_known_protocols_are_exactly_these():
    assert set(DATASET_PROTOCOLS) == set(EXPECTED)
    for name, protocol in DATASET_PROTOCOLS.items():
        assert protocol.name == name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_protocol_classes_folders_and_resize(name):
    classes, unseen, image_dir, label_dir, short, long = EXPECTED[name]
    protocol = dataset_protocol(name)
    assert len(protocol.class_names) == classes
    assert len(set(protocol.class_names)) == classes  # unseen classes are matched by name
    assert all(n and n == n.strip() for n in protocol.class_names)
    assert len(protocol.unseen_classes) == unseen
    assert set(protocol.unseen_classes) <= set(protocol.class_names)
    assert (protocol.image_dir, protocol.label_dir) == (image_dir, label_dir)
    assert protocol.image_suffix == ".jpg"
    assert protocol.ignore_index == 255
    assert (protocol.short_side, protocol.max_long_side) == (short, long)
    assert protocol.processing_size == f"short:{short}:{long}"
    assert protocol.source


def test_class_names_as_the_reference_feeds_them():
    ade = dataset_protocol("ade20k-150").class_names
    # detectron2's list has "window " with a trailing space; the reference strips names.
    assert ade[:9] == (
        *("wall", "building", "sky", "floor", "tree", "ceiling"),
        *("road, route", "bed", "window"),
    )
    assert ade[-1] == "flag"
    pcontext = dataset_protocol("pcontext-59").class_names
    assert (pcontext[0], pcontext[48], pcontext[49], pcontext[58]) == (
        "aeroplane",
        "sofa",
        "diningtable",
        "wood",
    )
    voc = dataset_protocol("voc-20").class_names
    assert (voc[0], voc[19]) == ("aeroplane", "tvmonitor")
    coco = dataset_protocol("coco-stuff-171").class_names
    assert (coco[0], coco[62], coco[79], coco[80], coco[170]) == (
        "person",
        "tv",
        "toothbrush",
        "banner",
        "wood",
    )


def test_zero_shot_splits_keep_the_full_class_list():
    voc15 = dataset_protocol("voc-15")
    assert voc15.class_names == dataset_protocol("voc-20").class_names
    # VOC's unseen classes are its last five label values.
    assert voc15.unseen_classes == voc15.class_names[15:]
    coco156 = dataset_protocol("coco-stuff-156")
    assert coco156.class_names == dataset_protocol("coco-stuff-171").class_names
    seen = [n for n in coco156.class_names if n not in coco156.unseen_classes]
    assert len(seen) == 156
    assert {"cow", "giraffe", "grass", "tree", "wall-concrete"} <= set(coco156.unseen_classes)


def test_unknown_protocol_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown dataset protocol 'voc-21'") as error:
        dataset_protocol("voc-21")
    for name in EXPECTED:
        assert name in str(error.value)
    with pytest.raises(ValueError, match="ade20k-150"):
        open_protocol_dataset(".", "ade20k")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_protocol_layout_reads_only_labelled_images(tmp_path, name):
    classes, _, image_dir, label_dir, _, _ = EXPECTED[name]
    labels = {"2008_000002": label_with(classes), "2008_000009": np.full((3, 4), 255)}
    write_layout(tmp_path, image_dir, label_dir, labels, unlabelled=("2008_000001", "2009_0"))
    dataset = open_protocol_dataset(tmp_path, name)
    assert dataset.protocol is dataset_protocol(name)
    assert dataset.class_names == list(dataset.protocol.class_names)
    assert dataset.ignore_index == 255
    assert dataset.unseen_classes == list(dataset.protocol.unseen_classes)
    assert len(dataset) == 2
    samples = list(dataset)
    assert [s.name for s in samples] == ["2008_000002", "2008_000009"]
    np.testing.assert_array_equal(samples[0].label, label_with(classes))
    assert samples[0].label.dtype == np.int64
    assert samples[0].image.shape == (3, 4, 3)
    assert samples[0].instances is None


def test_unseen_classes_reach_the_metrics_by_name(tmp_path):
    write_layout(tmp_path, "JPEGImages", "annotations_detectron2/val", {"a": label_with(20)})
    dataset = open_protocol_dataset(tmp_path, "voc-15")
    confusion = ConfusionMatrix(len(dataset.class_names), dataset.ignore_index)
    label = dataset[0].label
    confusion.update(label, label)
    metrics = compute_metrics(confusion, dataset.class_names, dataset.unseen_classes)
    assert metrics.unseen_classes == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert metrics.seen_miou == pytest.approx(1.0)  # classes 0 and 1
    assert metrics.unseen_miou == pytest.approx(1.0)  # class 19, tvmonitor


def test_label_without_image_is_named(tmp_path):
    write_layout(tmp_path, "val2017", "stuffthingmaps_detectron2/val2017", {"a": label_with(3)})
    (tmp_path / "val2017" / "a.jpg").unlink()
    with pytest.raises(DatasetError, match="no image for label .*a.png") as error:
        open_protocol_dataset(tmp_path, "coco-stuff-171")
    message = str(error.value)
    assert str(tmp_path / "val2017" / "a.jpg") in message
    assert "coco-stuff-171" in message


def test_label_beyond_the_class_list_is_refused(tmp_path):
    label = label_with(59)
    label[0, 0] = 59
    write_layout(tmp_path, "val/image", "val/label", {"a": label})
    dataset = open_protocol_dataset(tmp_path, "pcontext-59")
    with pytest.raises(DatasetError, match=r"values \[59\] beyond the 59 classes"):
        dataset[0]


def test_root_in_another_layout_names_the_missing_folder(tmp_path):
    write_layout(tmp_path, "images", "labels", {"a": label_with(3)})
    with pytest.raises(DatasetError, match="not found: .*images/validation") as error:
        open_protocol_dataset(tmp_path, "ade20k-150")
    assert "as ade20k-150: labels annotations_detectron2/validation/NAME.png" in str(error.value)


def test_empty_label_folder_is_named(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "annotations_detectron2" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no labels \(.png\) in .*annotations_detectron2"):
        open_protocol_dataset(tmp_path, "voc-20")


def write_folder(root: Path, labelled: tuple[str, ...], unlabelled: tuple[str, ...]) -> None:
    """FolderDataset's own layout: classes.txt (3 classes), images/*.png, labels/*.png."""
    labels = {n: label_with(3) for n in labelled}
    write_layout(root, "images", "labels", labels, unlabelled, image_suffix=".png")
    (root / "classes.txt").write_text("sky\ntree\nroad\n")


def test_folder_dataset_by_images_still_needs_every_label(tmp_path):
    write_folder(tmp_path, ("a", "b"), ("c",))
    with pytest.raises(DatasetError, match="no label for image .*c.png"):
        FolderDataset(tmp_path)


def test_folder_dataset_by_labels_with_its_suffix_and_class_file(tmp_path):
    write_folder(tmp_path, ("a", "b"), ("c",))
    dataset = FolderDataset(tmp_path, list_by="labels", image_suffix=".png")
    assert dataset.class_names == ["sky", "tree", "road"]
    assert [s.name for s in dataset] == ["a", "b"]
    with pytest.raises(DatasetError, match=r"no image for label .*a.png: expected .*a.jpg"):
        FolderDataset(tmp_path, list_by="labels")  # the default suffix is .jpg


def test_folder_dataset_class_names_given_instead_of_a_file(tmp_path):
    write_folder(tmp_path, ("a",), ())
    (tmp_path / "classes.txt").unlink()
    dataset = FolderDataset(tmp_path, class_names=("x", "y", "z"))
    assert dataset.class_names == ["x", "y", "z"]
    with pytest.raises(DatasetError, match="ignore index 2 collides.*given class list"):
        FolderDataset(tmp_path, class_names=("x", "y", "z"), ignore_index=2)


def test_folder_dataset_list_by_is_checked(tmp_path):
    write_folder(tmp_path, ("a",), ())
    with pytest.raises(ValueError, match="list_by must be one of images, labels"):
        FolderDataset(tmp_path, list_by="stems")
    with pytest.raises(ValueError, match="needs a label_dir"):
        FolderDataset(tmp_path, label_dir=None, list_by="labels")
