"""The evaluation protocols of the reference implementation (MendelXu/zsseg.baseline, ECCV 2022
"A Simple Baseline for Open-Vocabulary Semantic Segmentation"), chosen by name.

A protocol fixes, for one dataset's validation split as the reference's preparation scripts
leave it on disk: the class names in label-value order (exactly as the reference feeds them to
CLIP, surrounding spaces stripped), the image and label folders relative to the dataset root,
the ignore index, the unseen classes of its zero-shot split (empty for the cross-dataset
protocols) and the test resize (detectron2's ResizeShortestEdge with INPUT.MIN_SIZE_TEST and
INPUT.MAX_SIZE_TEST of the reference's configs). Samples are listed by the label folder, as
detectron2's load_sem_seg keeps only the images that have a label.

The class lists are package data: class_lists/NAME.txt, one name per line.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ovseg_ros.engine.datasets import DatasetError, FolderDataset, read_class_names
from ovseg_ros.engine.metrics import IGNORE_INDEX

CLASS_LISTS = Path(__file__).parent / "class_lists"
"""Folder of the class-name files, one name per line, line i = label value i."""


@dataclass(frozen=True)
class DatasetProtocol:
    """One named evaluation protocol.

    class_names: label value i is class_names[i]; image_dir, label_dir: folders relative to the
    dataset root (labels: single-channel PNG, NAME.png; images: NAME + image_suffix);
    ignore_index: the label value left out; unseen_classes: names (among class_names) of the
    zero-shot split's unseen classes, () for cross-dataset protocols; short_side, max_long_side:
    the test resize in pixels (short side scaled to short_side, long side then capped at
    max_long_side); source: where in the reference these come from.
    """

    name: str
    class_names: tuple[str, ...]
    image_dir: str
    label_dir: str
    short_side: int
    max_long_side: int
    source: str
    unseen_classes: tuple[str, ...] = ()
    image_suffix: str = ".jpg"
    ignore_index: int = IGNORE_INDEX

    @property
    def processing_size(self) -> str:
        """The test resize as a processing-size text (resize.ProcessingSize): "short:N:M"."""
        return f"short:{self.short_side}:{self.max_long_side}"


def _class_list(name: str) -> tuple[str, ...]:
    """The class names of class_lists/NAME.txt."""
    return tuple(read_class_names(CLASS_LISTS / f"{name}.txt"))


VOC_UNSEEN = ("pottedplant", "sheep", "sofa", "train", "tvmonitor")
"""The 5 unseen classes of the reference's VOC 15/5 split (label values 15-19)."""

COCO_STUFF_UNSEEN = (
    "cow",
    "giraffe",
    "suitcase",
    "frisbee",
    "skateboard",
    "carrot",
    "scissors",
    "cardboard",
    "clouds",
    "grass",
    "playingfield",
    "river",
    "road",
    "tree",
    "wall-concrete",
)
"""The 15 unseen classes of the reference's COCO-Stuff 156/15 split (10 things, 5 stuff)."""

ADE20K_150 = DatasetProtocol(
    name="ade20k-150",
    class_names=_class_list("ade20k-150"),
    image_dir="images/validation",
    label_dir="annotations_detectron2/validation",
    short_side=512,
    max_long_side=2048,
    source="detectron2's built-in ade20k_sem_seg_val (root ADEChallengeData2016); "
    "configs/ade20k-150/cross_dataset_test_only.yaml",
)
PCONTEXT_59 = DatasetProtocol(
    name="pcontext-59",
    class_names=_class_list("pcontext-59"),
    image_dir="val/image",
    label_dir="val/label",
    short_side=512,
    max_long_side=2048,
    source="mask_former/data/datasets/register_pcontext.py, pcontext_sem_seg_val (root "
    "pcontext); configs/pcontext-59/cross_dataset_test_only.yaml",
)
VOC_20 = DatasetProtocol(
    name="voc-20",
    class_names=_class_list("voc-20"),
    image_dir="JPEGImages",
    label_dir="annotations_detectron2/val",
    short_side=512,
    max_long_side=2048,
    source="mask_former/data/datasets/register_voc_seg.py, voc_sem_seg_test (root VOC2012); "
    "configs/voc-11k-20/Base-VOC11K-20.yaml",
)
COCO_STUFF_171 = DatasetProtocol(
    name="coco-stuff-171",
    class_names=_class_list("coco-stuff-171"),
    image_dir="val2017",
    label_dir="stuffthingmaps_detectron2/val2017",
    short_side=640,
    max_long_side=2560,
    source="mask_former/data/datasets/register_coco_stuff.py, coco_2017_test_stuff_sem_seg "
    "(root coco); configs/coco-stuff-164k-171/Base-COCOStuff164K-171.yaml",
)

DATASET_PROTOCOLS: dict[str, DatasetProtocol] = {
    p.name: p
    for p in (
        ADE20K_150,
        PCONTEXT_59,
        VOC_20,
        replace(
            VOC_20,
            name="voc-15",
            unseen_classes=VOC_UNSEEN,
            source="voc-20 with the 5 unseen classes of register_voc_seg.py; configs/voc-11k-15/",
        ),
        COCO_STUFF_171,
        replace(
            COCO_STUFF_171,
            name="coco-stuff-156",
            unseen_classes=COCO_STUFF_UNSEEN,
            source="coco-stuff-171 with the 15 unseen classes of register_coco_stuff.py; "
            "configs/coco-stuff-164k-156/",
        ),
    )
}
"""The protocols by name."""


def dataset_protocol(name: str) -> DatasetProtocol:
    """The protocol of that name, or ValueError listing the known names."""
    if name not in DATASET_PROTOCOLS:
        raise ValueError(
            f"unknown dataset protocol {name!r}; known: {', '.join(DATASET_PROTOCOLS)}"
        )
    return DATASET_PROTOCOLS[name]


class ProtocolDataset(FolderDataset):
    """A dataset folder read in a protocol's layout: a FolderDataset listed by its labels, with
    the protocol's class_names, ignore_index and unseen_classes (names), and `protocol`."""

    def __init__(self, root: str | Path, protocol: DatasetProtocol):
        super().__init__(
            root,
            image_dir=protocol.image_dir,
            label_dir=protocol.label_dir,
            ignore_index=protocol.ignore_index,
            class_names=protocol.class_names,
            list_by="labels",
            image_suffix=protocol.image_suffix,
        )
        self.protocol = protocol
        self.unseen_classes = list(protocol.unseen_classes)


def open_protocol_dataset(root: str | Path, protocol: str | DatasetProtocol) -> ProtocolDataset:
    """The dataset at root in the layout of `protocol` (a DatasetProtocol or its name).
    ValueError for an unknown name; DatasetError (naming the folder or file) when root is not in
    that layout."""
    if isinstance(protocol, str):
        protocol = dataset_protocol(protocol)
    try:
        return ProtocolDataset(root, protocol)
    except DatasetError as error:
        raise DatasetError(
            f"{error} (reading {root} as {protocol.name}: labels {protocol.label_dir}/NAME.png, "
            f"images {protocol.image_dir}/NAME{protocol.image_suffix})"
        ) from error
