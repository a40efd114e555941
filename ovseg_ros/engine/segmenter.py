"""TwoStageSegmenter: image + encoded vocabulary -> Segmentation (the paper's method).

Stage 1 proposes class-agnostic masks (proposals/), stage 2 classifies each with CLIP
(classify.py), and aggregate_scores spreads the per-mask class probabilities back to pixels.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ovseg_ros.engine.classify import (
    CropClassifier,
    clip_probabilities,
    ensemble_probabilities,
    usable_masks,
)
from ovseg_ros.engine.clip_model import ClipModel, load_clip
from ovseg_ros.engine.dense import DenseFeatureExtractor
from ovseg_ros.engine.proposals import (
    DEFAULT_PROPOSAL_GENERATOR,
    ProposalGenerator,
    Proposals,
    build_proposal_generator,
)
from ovseg_ros.engine.segmentation import UNLABELED, Segmentation, extract_segments
from ovseg_ros.engine.vocabulary import EncodedVocabulary

CLASSIFIERS = ("crop", "dense")
"""Stage-2 classifiers SegmenterConfig.classifier may name."""

AGGREGATION_CHUNK = 1 << 22
"""Most values (masks or classes, whichever are more, x pixels) per block of image rows while
aggregating: bounds memory and keeps a block in cache."""


@dataclass
class SegmenterConfig:
    """Settings of stage 2 and the aggregation; may be changed between segment() calls.

    mask_threshold: soft (float) proposal masks are binarised at mask > threshold for stage 2, in
        [0, 1); bool masks are used as they are.
    unlabeled_threshold: pixels whose best normalised class score is below it are UNLABELED,
        in [0, 1]; 0 labels every pixel some proposal covers.
    min_proposal_area: proposals with fewer pixels once binarised are dropped before stage 2
        (a crop of a few pixels says nothing); >= 1.
    batch_size: most crops per CLIP image forward (bounds memory).
    min_segment_area: smallest segment, in pixels, listed in Segmentation.segments.
    ensemble_weight: lambda of the geometric ensemble with proposal class scores (used only
        when the proposal generator scores its masks; 0 uses CLIP alone, as the reference).
    classifier: "crop", one CLIP forward per mask crop (the paper), or "dense", one CLIP
        forward per frame, each mask's class token attending only to its patches (dense.py).
    """

    mask_threshold: float = 0.5
    unlabeled_threshold: float = 0.0
    min_proposal_area: int = 16
    batch_size: int = 32
    min_segment_area: int = 16
    ensemble_weight: float = 0.8
    classifier: str = "crop"


def check_image(image: object) -> np.ndarray:
    """Returns `image` if it is an (H, W, 3) uint8 array with H, W >= 1, else raises ValueError
    saying what is wrong and how to convert. Float images are refused (their range, [0, 1] or
    [0, 255], is ambiguous); 1-pixel images are accepted."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an (H, W, 3) uint8 RGB numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an (H, W, 3) RGB image, got shape {image.shape}; convert grayscale "
            "(H, W) or RGBA (H, W, 4) images to RGB first (e.g. cv2.cvtColor)"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if image.dtype != np.uint8:
        nan = np.issubdtype(image.dtype, np.floating) and bool(np.isnan(image).any())
        raise ValueError(
            f"expected a uint8 RGB image, got dtype {image.dtype}"
            + (" containing NaN" if nan else "")
            + "; convert it, e.g. np.clip(image * 255, 0, 255).astype(np.uint8) for floats in "
            "[0, 1]" + (" after replacing NaN (np.nan_to_num)" if nan else "")
        )
    return image


def aggregate_scores(
    probabilities: torch.Tensor,
    masks: torch.Tensor,
    weights: torch.Tensor | None = None,
    unlabeled_threshold: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel labels from per-mask class probabilities.

    probabilities: (N, C) in [0, 1]; masks: (N, H, W) bool or float in [0, 1]; weights: (N,) > 0
    or None (1).
    semseg[c, h, w] = sum_q w_q p[q, c] mask_q[h, w] (the paper's einsum, with weights);
    label = argmax_c semseg. Overlapping masks are normalised by the pixel's coverage
    sum_q w_q mask_q[h, w]: score = semseg[label] / coverage, the weighted mean of the covering
    masks' probabilities of that class, in [0, 1] (the argmax is unchanged by it).
    Returns labels: (H, W) int64, UNLABELED where no mask covers the pixel or the score is below
    unlabeled_threshold; scores: (H, W) float32, 0 where uncovered.
    """
    height, width = masks.shape[1:]
    weights = (
        torch.ones(masks.shape[0], device=masks.device)
        if weights is None
        else weights.to(masks.device).float()
    )
    # One pass over the masks: column c < C gives semseg[c], the last column the coverage.
    table = torch.cat(
        [probabilities.to(masks.device).float() * weights[:, None], weights[:, None]], dim=1
    )
    best = torch.empty((height, width), device=masks.device)
    labels = torch.empty((height, width), dtype=torch.int64, device=masks.device)
    coverage = torch.empty((height, width), device=masks.device)
    rows = max(1, AGGREGATION_CHUNK // (max(table.shape) * width))
    for top in range(0, height, rows):
        sums = torch.einsum("qk,qhw->khw", table, masks[:, top : top + rows].float())
        coverage[top : top + rows] = sums[-1]
        best[top : top + rows], labels[top : top + rows] = sums[:-1].max(dim=0)
    covered = coverage > 0
    scores = torch.where(covered, best / coverage.clamp(min=1e-12), torch.zeros_like(best))
    labels[~covered | (scores < unlabeled_threshold)] = UNLABELED
    return labels.cpu().numpy(), scores.cpu().numpy().astype(np.float32)


class TwoStageSegmenter:
    """Open-vocabulary semantic segmentation: proposals, CLIP crop classification, aggregation.

    clip: the loaded CLIP model; proposals: the stage-1 generator; config: SegmenterConfig.
    The vocabulary is passed with each image (encode it with a VocabularyEncoder on the same
    clip), so every result is consistent with the names it carries.
    """

    def __init__(
        self,
        clip: ClipModel,
        proposals: ProposalGenerator,
        config: SegmenterConfig | None = None,
    ) -> None:
        self.clip = clip
        self.proposals = proposals
        self.config = config or SegmenterConfig()
        self.classifier = CropClassifier(clip)
        self.dense = DenseFeatureExtractor(clip)

    def _check_inputs(self, image: np.ndarray, vocabulary: EncodedVocabulary) -> None:
        check_image(image)
        if vocabulary.text_embeddings.shape[1] != self.clip.embed_dim:
            raise ValueError(
                f"the vocabulary's text embeddings have {vocabulary.text_embeddings.shape[1]} "
                f"dimensions but {self.clip.name} embeds into {self.clip.embed_dim}; encode it "
                "with this segmenter's CLIP model"
            )

    def propose(self, image: np.ndarray, vocabulary: EncodedVocabulary) -> Proposals:
        """Stage 1 alone: image (H, W, 3) uint8 RGB -> its mask proposals, for a later
        segment(image, vocabulary, proposals) (e.g. on another thread, as the node's pipeline)."""
        self._check_inputs(image, vocabulary)
        return self.proposals(image, vocabulary)

    def segment(
        self,
        image: np.ndarray,
        vocabulary: EncodedVocabulary,
        proposals: Proposals | None = None,
    ) -> Segmentation:
        """image: (H, W, 3) uint8 RGB (see check_image) -> Segmentation under `vocabulary`.

        proposals: propose(image, vocabulary) computed earlier, or None to run stage 1 here.
        timings_ms holds the wall time of: proposals (only when run here), crops, clip_image,
        aggregation, segments.
        """
        self._check_inputs(image, vocabulary)
        config = self.config
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            if self.clip.device.type == "cuda":
                torch.cuda.synchronize(self.clip.device)
            now = time.perf_counter()
            timings[stage] = 1000.0 * (now - clock)
            clock = now

        if proposals is None:
            proposals = self.proposals(image, vocabulary)
            lap("proposals")
        masks = proposals.masks.to(self.clip.device)
        if config.classifier == "dense":
            binary, kept = usable_masks(masks, config.mask_threshold, config.min_proposal_area)
            kept = kept.cpu()
            lap("crops")
            embeddings = self.dense.mask_embeddings(image, binary)
        elif config.classifier == "crop":
            crops = self.classifier.make_crops(
                image, masks, config.mask_threshold, config.min_proposal_area
            )
            kept = crops.kept
            lap("crops")
            embeddings = self.classifier.embed(crops.crops, config.batch_size)[crops.inverse]
        else:
            raise ValueError(f"classifier must be 'crop' or 'dense', got {config.classifier!r}")
        lap("clip_image")

        clip_probs = clip_probabilities(
            embeddings, vocabulary.text_embeddings.to(embeddings.device)
        )
        weights = proposals.weights
        if proposals.class_scores is not None and config.ensemble_weight > 0:
            # As the reference: masks left empty by the threshold keep p_clip = 1.
            full = torch.ones((len(proposals), vocabulary.num_classes), device=masks.device)
            full[kept.to(masks.device)] = clip_probs.to(masks.device)
            probabilities = ensemble_probabilities(
                full,
                proposals.class_scores.to(masks.device),
                config.ensemble_weight,
                proposals.trained_classes,
            )
        else:
            probabilities = clip_probs
            if len(kept) < len(masks):
                masks = masks[kept.to(masks.device)]
                weights = None if weights is None else weights[kept]
        labels, scores = aggregate_scores(probabilities, masks, weights, config.unlabeled_threshold)
        lap("aggregation")
        labels = labels.astype(np.uint16)
        segments = extract_segments(labels, scores, vocabulary.class_names, config.min_segment_area)
        lap("segments")
        return Segmentation(
            labels=labels,
            scores=scores,
            class_names=list(vocabulary.class_names),
            vocabulary_version=vocabulary.version,
            segments=segments,
            timings_ms=timings,
        )


@dataclass
class ThreadSettings:
    """Process-wide threading knobs: torch's intra-op CPU threads (>= 1) and Python's thread
    switch interval in seconds (sys.setswitchinterval; 0.005 by default)."""

    torch_threads: int
    switch_interval_s: float

    @classmethod
    def current(cls) -> ThreadSettings:
        return cls(torch.get_num_threads(), sys.getswitchinterval())

    def apply(self) -> None:
        torch.set_num_threads(self.torch_threads)
        sys.setswitchinterval(self.switch_interval_s)


PIPELINE_SWITCH_INTERVAL_S = 0.0005
"""Python's switch interval while stages 1 and 2 run on threads of their own. Both release and
retake the GIL around every numpy or torch call; at the default 5 ms, each retake can wait a full
interval behind the other thread, and frames stalled for seconds (node over DDS, 2-core CPU:
3 of 6 runs fell below 1 frame/s at 5 ms, none of 11 at 0.5 ms)."""


def pipeline_thread_settings(before: ThreadSettings) -> ThreadSettings:
    """Settings for stage 1 on a thread of its own next to stage 2: one torch thread fewer (at
    least 1) so stage 1 keeps a core, and PIPELINE_SWITCH_INTERVAL_S."""
    return ThreadSettings(max(1, before.torch_threads - 1), PIPELINE_SWITCH_INTERVAL_S)


def enter_pipeline_threads() -> ThreadSettings:
    """Applies pipeline_thread_settings to this process; returns the settings before, whose
    apply() restores them."""
    before = ThreadSettings.current()
    pipeline_thread_settings(before).apply()
    return before


def build_segmenter(
    model: str,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    proposal_generator: str = DEFAULT_PROPOSAL_GENERATOR,
    max_proposals: int = 100,
    config: SegmenterConfig | None = None,
    random_weights: bool = False,
    proposal_checkpoint: str | Path | None = None,
    compile_image_tower: bool = False,
) -> TwoStageSegmenter:
    """Loads CLIP (clip_model.load_clip: exactly one of pretrained, checkpoint, random_weights)
    and builds the named proposal generator capped at max_proposals masks per image.

    proposal_checkpoint: weights of a learned generator ("maskformer"; None = its bundled
    default), which also gets the CLIP model and device; refused for training-free ones.
    """
    clip = load_clip(
        model,
        pretrained=pretrained,
        checkpoint=checkpoint,
        device=device,
        precision=precision,
        random_weights=random_weights,
        compile_image_tower=compile_image_tower,
    )
    settings: dict[str, object] = {"max_proposals": max_proposals}
    if proposal_generator == "maskformer":
        settings.update(checkpoint=proposal_checkpoint, clip=clip, device=str(clip.device))
    elif proposal_checkpoint:
        raise ValueError(f"proposal generator {proposal_generator!r} takes no checkpoint")
    proposals = build_proposal_generator(proposal_generator, **settings)
    return TwoStageSegmenter(clip, proposals, config)
