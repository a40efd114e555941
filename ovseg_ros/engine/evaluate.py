"""Evaluation: run a segmenter over a dataset and compute the harness's metrics (metrics.py).

Every pixel of the ground truth counts except the dataset's ignore index; pixels the segmenter
leaves UNLABELED count as misses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ovseg_ros.engine.datasets import Sample
from ovseg_ros.engine.metrics import ConfusionMatrix, SegmentationMetrics, compute_metrics
from ovseg_ros.engine.segmenter import TwoStageSegmenter
from ovseg_ros.engine.vocabulary import EncodedVocabulary


@dataclass
class Evaluation:
    """Result of one evaluation run.

    metrics: mIoU and the rest (metrics.SegmentationMetrics); num_images: images segmented;
    mean_timings_ms: per stage, mean wall time per image in milliseconds.
    """

    metrics: SegmentationMetrics
    num_images: int
    mean_timings_ms: dict[str, float] = field(default_factory=dict)


def evaluate(
    segmenter: TwoStageSegmenter,
    vocabulary: EncodedVocabulary,
    samples: Iterable[Sample],
    num_classes: int,
    ignore_index: int,
    unseen_classes: Sequence[str] = (),
    on_image: Callable[[int], None] | None = None,
) -> Evaluation:
    """Segments every sample under `vocabulary` (whose class i must be the dataset's label i)
    and accumulates a confusion matrix of num_classes classes. on_image(done) is called after
    each image (for a progress bar)."""
    if vocabulary.num_classes != num_classes:
        raise ValueError(
            f"the vocabulary has {vocabulary.num_classes} classes, the dataset {num_classes}"
        )
    confusion = ConfusionMatrix(num_classes, ignore_index)
    totals: dict[str, float] = {}
    done = 0
    for sample in samples:
        segmentation = segmenter.segment(sample.image, vocabulary)
        confusion.update(segmentation.labels.astype(np.int64), sample.label)
        for stage, ms in segmentation.timings_ms.items():
            totals[stage] = totals.get(stage, 0.0) + ms
        done += 1
        if on_image is not None:
            on_image(done)
    metrics = compute_metrics(confusion, vocabulary.class_names, unseen_classes)
    means = {stage: total / max(done, 1) for stage, total in totals.items()}
    return Evaluation(metrics=metrics, num_images=done, mean_timings_ms=means)


def best_iou_per_instance(masks: torch.Tensor, instances: np.ndarray) -> list[float]:
    """Proposal recall: for each ground-truth instance, the IoU of the best-matching proposal.

    masks: (N, H, W) proposals, binarised at 0.5; instances: (H, W) int, 0 = background,
    k >= 1 = instance k. Returns one IoU in [0, 1] per instance present, in increasing k.
    """
    binary = (masks > 0.5).flatten(1).float()
    flat = torch.from_numpy(instances.ravel().astype(np.int64))
    recalls = []
    for k in np.unique(instances):
        if k == 0:
            continue
        target = (flat == int(k)).float()
        intersection = binary @ target
        union = binary.sum(dim=1) + target.sum() - intersection
        recalls.append(float((intersection / union.clamp(min=1)).max()) if len(binary) else 0.0)
    return recalls


def metrics_markdown(evaluation: Evaluation, title: str, settings: dict[str, object]) -> str:
    """A markdown report: settings, headline figures, IoU per class, mean stage timings."""

    def percent(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{100 * value:.1f}"

    m = evaluation.metrics
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {value}" for key, value in settings.items()]
    lines += [f"- images: {evaluation.num_images}", ""]
    lines += ["| figure | value (%) |", "| --- | ---: |"]
    lines += [f"| mIoU | {percent(m.miou)} |", f"| pixel accuracy | {percent(m.pixel_accuracy)} |"]
    if m.unseen_classes:
        lines += [
            f"| seen mIoU | {percent(m.seen_miou)} |",
            f"| unseen mIoU | {percent(m.unseen_miou)} |",
            f"| hIoU | {percent(m.hiou)} |",
        ]
    lines += ["", "| class | IoU (%) |", "| --- | ---: |"]
    for name, iou in zip(m.class_names, m.iou, strict=True):
        unseen = " (unseen)" if name in m.unseen_classes else ""
        lines.append(f"| {name}{unseen} | {percent(iou)} |")
    if evaluation.mean_timings_ms:
        lines += ["", "| stage | mean ms / image |", "| --- | ---: |"]
        lines += [f"| {stage} | {ms:.1f} |" for stage, ms in evaluation.mean_timings_ms.items()]
        total = sum(evaluation.mean_timings_ms.values())
        lines.append(f"| total | {total:.1f} |")
    return "\n".join(lines) + "\n"
