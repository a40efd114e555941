"""The paper's central comparison on one dataset: the proposal network's own classification,
CLIP on masked crops, and their ensemble, each as seen / unseen mIoU and hIoU.

All three use the same proposals. Network only: semseg[c] = sum_q p_net[q, c] mask_q (the
reference's MaskFormer inference). CLIP only and ensemble: TwoStageSegmenter with ensemble
weight 0 and lambda.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ovseg_ros.engine.clip_model import ClipModel
from ovseg_ros.engine.evaluate import evaluate
from ovseg_ros.engine.metrics import SegmentationMetrics
from ovseg_ros.engine.proposals.base import ProposalGenerator
from ovseg_ros.engine.segmentation import Segmentation, extract_segments
from ovseg_ros.engine.segmenter import SegmenterConfig, TwoStageSegmenter, aggregate_scores
from ovseg_ros.engine.vocabulary import EncodedVocabulary


class NetworkOnlySegmenter:
    """Segments with the proposal network's class scores alone (no CLIP image forward)."""

    def __init__(self, proposals: ProposalGenerator, min_segment_area: int = 16) -> None:
        self.proposals = proposals
        self.min_segment_area = min_segment_area

    def segment(self, image: np.ndarray, vocabulary: EncodedVocabulary) -> Segmentation:
        """image: (H, W, 3) uint8 RGB -> Segmentation; the generator must score its masks."""
        start = time.perf_counter()
        proposals = self.proposals(image, vocabulary)
        if proposals.class_scores is None:
            raise ValueError("the proposal generator gives no class scores to segment with")
        labels, scores = aggregate_scores(proposals.class_scores, proposals.masks)
        labels = labels.astype(np.uint16)
        return Segmentation(
            labels=labels,
            scores=scores,
            class_names=list(vocabulary.class_names),
            vocabulary_version=vocabulary.version,
            segments=extract_segments(
                labels, scores, vocabulary.class_names, self.min_segment_area
            ),
            timings_ms={"proposals": 1000.0 * (time.perf_counter() - start)},
        )


@dataclass
class ZeroShotComparison:
    """Metrics of the three ways to classify the same proposals; ensemble keyed by lambda."""

    network_only: SegmentationMetrics
    clip_only: SegmentationMetrics
    ensemble: dict[float, SegmentationMetrics] = field(default_factory=dict)


def compare_classifiers(
    clip: ClipModel,
    proposals: ProposalGenerator,
    vocabulary: EncodedVocabulary,
    dataset,
    ensemble_weights: Sequence[float] = (0.8,),
    mask_threshold: float = 0.5,
) -> ZeroShotComparison:
    """Evaluates network only, CLIP only and the ensemble (one run per lambda) on `dataset` (a
    datasets.py reader with class_names, ignore_index and, for hIoU, unseen_classes)."""
    unseen = getattr(dataset, "unseen_classes", ())

    def run(segmenter) -> SegmentationMetrics:
        return evaluate(
            segmenter, vocabulary, dataset, len(dataset.class_names), dataset.ignore_index, unseen
        ).metrics

    def two_stage(weight: float) -> TwoStageSegmenter:
        config = SegmenterConfig(mask_threshold=mask_threshold, ensemble_weight=weight)
        return TwoStageSegmenter(clip, proposals, config)

    return ZeroShotComparison(
        network_only=run(NetworkOnlySegmenter(proposals)),
        clip_only=run(two_stage(0.0)),
        ensemble={weight: run(two_stage(weight)) for weight in ensemble_weights},
    )
