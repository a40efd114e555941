"""Evaluation: run a segmenter over a dataset and compute the harness's metrics (metrics.py),
and, for samples with instance maps, the class-agnostic figures of stage 1 (proposal_metrics.py).

Every pixel of the ground truth counts except the dataset's ignore index; pixels the segmenter
leaves UNLABELED count as misses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ovseg_ros.engine.datasets import Sample
from ovseg_ros.engine.metrics import ConfusionMatrix, SegmentationMetrics, compute_metrics
from ovseg_ros.engine.proposal_metrics import (
    ProposalFigures,
    ProposalStats,
    best_iou_per_instance,
)
from ovseg_ros.engine.proposals import ProposalGenerator, Proposals
from ovseg_ros.engine.resize import ProcessingSize
from ovseg_ros.engine.segmenter import TwoStageSegmenter, check_image
from ovseg_ros.engine.vocabulary import EncodedVocabulary

__all__ = [
    "Evaluation",
    "ProposalFigures",
    "best_iou_per_instance",
    "evaluate",
    "evaluate_proposals",
    "metrics_markdown",
]


@dataclass
class Evaluation:
    """Result of one evaluation run.

    metrics: mIoU and the rest (metrics.SegmentationMetrics), None for a run of stage 1 only
    (evaluate_proposals); num_images: images processed; mean_timings_ms: per stage, mean wall
    time per image in milliseconds; proposals: class-agnostic stage-1 figures over the samples
    that have instance maps, None when none has.
    """

    metrics: SegmentationMetrics | None
    num_images: int
    mean_timings_ms: dict[str, float] = field(default_factory=dict)
    proposals: ProposalFigures | None = None


def _timed_proposals(make: Callable[[], Proposals]) -> tuple[Proposals, float]:
    """Runs stage 1 and returns its proposals and wall time in ms (waiting for the GPU)."""
    start = time.perf_counter()
    proposals = make()
    if proposals.masks.is_cuda:
        torch.cuda.synchronize(proposals.masks.device)
    return proposals, 1000.0 * (time.perf_counter() - start)


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
    and accumulates a confusion matrix of num_classes classes. With a segmenter that has
    propose() (TwoStageSegmenter), stage 1 runs first on its own (timed as "proposals",
    including the resize to the processing size), then stage 2 on its proposals, and samples
    with instance maps add to the proposal figures; other segmenters just segment().
    on_image(done) is called after each image (for a progress bar)."""
    if vocabulary.num_classes != num_classes:
        raise ValueError(
            f"the vocabulary has {vocabulary.num_classes} classes, the dataset {num_classes}"
        )
    confusion = ConfusionMatrix(num_classes, ignore_index)
    stats = ProposalStats()
    # Any object with segment(image, vocabulary) is evaluated; with propose() as well (as
    # TwoStageSegmenter), stage 1 runs apart and is measured.
    propose = getattr(segmenter, "propose", None)
    totals: dict[str, float] = {}
    done = 0
    for sample in samples:
        if sample.label is None:
            raise ValueError(
                f"sample {sample.name} has no label map; evaluate_proposals measures stage 1 "
                "on instance maps alone"
            )
        timings: dict[str, float] = {}
        if propose is None:
            segmentation = segmenter.segment(sample.image, vocabulary)
        else:
            # Stage-1 ms includes the resize to the processing size, which segment() repeats
            # (and times as "resize"), as the node's pipeline does.
            proposals, timings["proposals"] = _timed_proposals(
                lambda sample=sample: propose(sample.image, vocabulary)
            )
            segmentation = segmenter.segment(sample.image, vocabulary, proposals)
            if sample.instances is not None:
                stats.add(proposals.masks, sample.instances, timings["proposals"])
        confusion.update(segmentation.labels.astype(np.int64), sample.label)
        for stage, ms in {**timings, **segmentation.timings_ms}.items():
            totals[stage] = totals.get(stage, 0.0) + ms
        done += 1
        if on_image is not None:
            on_image(done)
    metrics = compute_metrics(confusion, vocabulary.class_names, unseen_classes)
    means = {stage: total / max(done, 1) for stage, total in totals.items()}
    return Evaluation(
        metrics=metrics,
        num_images=done,
        mean_timings_ms=means,
        proposals=stats.figures() if stats.counts else None,
    )


def evaluate_proposals(
    proposer: TwoStageSegmenter | ProposalGenerator,
    samples: Iterable[Sample],
    vocabulary: EncodedVocabulary | None = None,
    processing_size: ProcessingSize | str = "0",
    on_image: Callable[[int], None] | None = None,
) -> Evaluation:
    """Stage 1 alone over samples with instance maps: Evaluation with metrics None, the
    proposal figures, and mean_timings_ms {"proposals": ...}.

    proposer: a segmenter (its stage-1 generator runs on its processing image) or a bare
    generator (run on the image resized to processing_size: a resize.ProcessingSize or its
    text, e.g. "640" or "short:512:2048"; "0" = native size); vocabulary: passed to the
    generator (learned generators then also score their masks; None is fine).
    A sample without an instance map raises ValueError naming it."""
    if isinstance(proposer, TwoStageSegmenter):
        segmenter = proposer

        def propose(image: np.ndarray) -> Proposals:
            return segmenter.propose(image, vocabulary)
    else:
        generator = proposer
        size = (
            ProcessingSize.parse(processing_size)
            if isinstance(processing_size, str)
            else processing_size
        )

        def propose(image: np.ndarray) -> Proposals:
            return generator(size.apply(image), vocabulary)

    stats = ProposalStats()
    for done, sample in enumerate(samples, start=1):
        if sample.instances is None:
            raise ValueError(f"sample {sample.name} has no instance map; proposal figures need one")
        image = check_image(sample.image)
        proposals, stage1_ms = _timed_proposals(lambda image=image: propose(image))
        stats.add(proposals.masks, sample.instances, stage1_ms)
        if on_image is not None:
            on_image(done)
    figures = stats.figures()
    timings = {} if not stats.counts else {"proposals": figures.stage1_ms}
    return Evaluation(
        metrics=None, num_images=figures.num_images, mean_timings_ms=timings, proposals=figures
    )


def metrics_markdown(evaluation: Evaluation, title: str, settings: dict[str, object]) -> str:
    """A markdown report: settings, headline figures, IoU per class, the class-agnostic
    proposal figures (when measured), mean stage timings."""

    def percent(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{100 * value:.1f}"

    m = evaluation.metrics
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {value}" for key, value in settings.items()]
    lines += [f"- images: {evaluation.num_images}", ""]
    if m is not None:
        lines += ["| figure | value (%) |", "| --- | ---: |"]
        lines += [
            f"| mIoU | {percent(m.miou)} |",
            f"| pixel accuracy | {percent(m.pixel_accuracy)} |",
        ]
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
        lines.append("")
    if evaluation.proposals is not None:
        lines += [*evaluation.proposals.markdown(), ""]
    if evaluation.mean_timings_ms:
        lines += ["| stage | mean ms / image |", "| --- | ---: |"]
        lines += [f"| {stage} | {ms:.1f} |" for stage, ms in evaluation.mean_timings_ms.items()]
        total = sum(evaluation.mean_timings_ms.values())
        lines += [f"| total | {total:.1f} |", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
