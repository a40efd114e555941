"""Semantic segmentation metrics from a confusion matrix: IoU per class, mIoU, pixel accuracy,
seen / unseen mIoU and their harmonic mean hIoU (the zero-shot figure of the paper).

Conventions, as mmsegmentation and detectron2 compute them:
- Ground-truth pixels equal to `ignore_index` (255 by default) are not counted at all.
- A predicted value outside [0, num_classes) (for example the segmenter's UNLABELED, 65535)
  predicts no class: the pixel is a miss for its ground-truth class and a false positive for no
  class. It counts in the pixel accuracy denominator.
- IoU of class c = TP / (TP + FP + FN). A class absent from the ground truth and never predicted
  has no IoU (NaN) and is left out of every mean; a class absent from the ground truth but
  predicted somewhere has IoU 0 and is counted.
- mIoU is the mean over classes with an IoU; seen / unseen mIoU the same over the seen / unseen
  classes; hIoU = 2 * seen * unseen / (seen + unseen).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Pixel counts of (ground-truth class, predicted class) pairs, accumulated over images.

    counts: (C, C + 1) int64; counts[g, p] = pixels of ground truth g predicted as p, and the
    last column counts pixels of ground truth g for which no class was predicted.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Adds one image. pred, gt: (H, W) integer class indices of the same shape; gt values
        are in [0, num_classes) or ignore_index; pred values outside [0, num_classes) mean
        "no class"."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
        gt = gt.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        keep = gt != self.ignore_index
        gt, pred = gt[keep], pred[keep]
        if gt.size and (gt.min() < 0 or gt.max() >= self.num_classes):
            bad = gt[(gt < 0) | (gt >= self.num_classes)][0]
            raise ValueError(
                f"ground-truth value {bad} is neither a class index in [0, {self.num_classes}) "
                f"nor the ignore index {self.ignore_index}"
            )
        pred = np.where((pred >= 0) & (pred < self.num_classes), pred, self.num_classes)
        pairs = gt * (self.num_classes + 1) + pred
        self.counts += np.bincount(pairs, minlength=self.counts.size).reshape(self.counts.shape)

    @property
    def num_pixels(self) -> int:
        """Pixels counted so far (ignored pixels excluded)."""
        return int(self.counts.sum())


def class_iou(confusion: ConfusionMatrix) -> np.ndarray:
    """(C,) float64 IoU per class in [0, 1]; NaN where the class is neither in the ground
    truth nor predicted."""
    counts = confusion.counts
    n = confusion.num_classes
    true_positive = np.diag(counts[:, :n]).astype(np.float64)
    gt_area = counts.sum(axis=1)
    pred_area = counts[:, :n].sum(axis=0)
    union = gt_area + pred_area - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def miou(iou: np.ndarray) -> float:
    """Mean of the IoUs that are not NaN; NaN when all are."""
    valid = iou[~np.isnan(iou)]
    return float(valid.mean()) if valid.size else math.nan


def pixel_accuracy(confusion: ConfusionMatrix) -> float:
    """Correctly classified pixels / counted pixels, in [0, 1]; NaN with no pixels."""
    total = confusion.num_pixels
    n = confusion.num_classes
    return float(np.trace(confusion.counts[:, :n]) / total) if total else math.nan


def hiou(seen_miou: float, unseen_miou: float) -> float:
    """Harmonic mean of seen and unseen mIoU; 0 when both are 0, NaN when either is NaN."""
    if math.isnan(seen_miou) or math.isnan(unseen_miou):
        return math.nan
    total = seen_miou + unseen_miou
    return 2 * seen_miou * unseen_miou / total if total > 0 else 0.0


@dataclass
class SegmentationMetrics:
    """Figures of one evaluation; IoUs and accuracies in [0, 1], NaN where undefined.

    iou: per class, in class_names order. seen_miou, unseen_miou, hiou: NaN when no unseen
    classes were named.
    """

    class_names: list[str]
    iou: list[float]
    miou: float
    pixel_accuracy: float
    seen_miou: float
    unseen_miou: float
    hiou: float
    unseen_classes: list[str]
    num_pixels: int

    def to_dict(self) -> dict:
        """JSON-ready dict; NaN becomes None, per-class IoU keyed by class name."""

        def clean(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "miou": clean(self.miou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "seen_miou": clean(self.seen_miou),
            "unseen_miou": clean(self.unseen_miou),
            "hiou": clean(self.hiou),
            "iou": {name: clean(v) for name, v in zip(self.class_names, self.iou, strict=True)},
            "unseen_classes": list(self.unseen_classes),
            "num_pixels": self.num_pixels,
        }


def compute_metrics(
    confusion: ConfusionMatrix, class_names: list[str], unseen_classes: Iterable[str] = ()
) -> SegmentationMetrics:
    """All figures of `confusion`, whose class i is class_names[i]; every class not in
    `unseen_classes` counts as seen."""
    if len(class_names) != confusion.num_classes:
        raise ValueError(
            f"{len(class_names)} class names for a confusion matrix of "
            f"{confusion.num_classes} classes"
        )
    unseen = list(unseen_classes)
    unknown = sorted(set(unseen) - set(class_names))
    if unknown:
        raise ValueError(f"unseen classes not among the class names: {unknown}")
    iou = class_iou(confusion)
    is_unseen = np.array([name in unseen for name in class_names])
    if is_unseen.any():
        seen_miou, unseen_miou = miou(iou[~is_unseen]), miou(iou[is_unseen])
        harmonic = hiou(seen_miou, unseen_miou)
    else:
        seen_miou = unseen_miou = harmonic = math.nan
    return SegmentationMetrics(
        class_names=list(class_names),
        iou=[float(v) for v in iou],
        miou=miou(iou),
        pixel_accuracy=pixel_accuracy(confusion),
        seen_miou=seen_miou,
        unseen_miou=unseen_miou,
        hiou=harmonic,
        unseen_classes=unseen,
        num_pixels=confusion.num_pixels,
    )
