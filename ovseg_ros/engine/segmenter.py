"""TwoStageSegmenter: image + encoded vocabulary -> Segmentation (the paper's method).

Stage 1 proposes class-agnostic masks (proposals/), stage 2 classifies each with CLIP
(classify.py), and aggregate_scores spreads the per-mask class probabilities back to pixels.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
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
from ovseg_ros.engine.options import (
    DEFAULT_CLASSIFIER,
    DEFAULT_MASK_THRESHOLD,
    DEFAULT_MIN_PROPOSAL_AREA,
    DEFAULT_PROCESSING_SIZE,
    DEFAULT_REJECTION,
    DEFAULT_UNLABELED_THRESHOLD,
    SAM_GENERATORS,
    check_proposal_model,
)
from ovseg_ros.engine.proposals import (
    DEFAULT_PROPOSAL_GENERATOR,
    ProposalGenerator,
    Proposals,
    build_proposal_generator,
)
from ovseg_ros.engine.rejection import (
    RejectionCalibration,
    known_probabilities,
    rejection_calibration,
)
from ovseg_ros.engine.resize import ProcessingSize
from ovseg_ros.engine.segmentation import UNLABELED, Segmentation, extract_segments
from ovseg_ros.engine.vocabulary import EncodedVocabulary

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
    processing_size: the size both stages see (resize.ProcessingSize, or its text: "640" = long
        side at most 640, "short:512:2048" = short side 512 with the long side at most 2048, as
        the reference's test resize, "0" = native); the result comes back at the input's
        resolution (class scores resized bilinearly before the argmax).
    rejection: open-set rejection strength in [0, 1]: pixels whose probability of showing a
        vocabulary class (rejection.known_probabilities, per mask, aggregated per pixel) is
        below it become UNLABELED ("unknown"); 0 turns it off and leaves every label as without
        it.
    known_map: also return that per-pixel probability (Segmentation.known) when rejection is 0
        (evaluations use it to sweep the strength).
    """

    mask_threshold: float = DEFAULT_MASK_THRESHOLD
    unlabeled_threshold: float = DEFAULT_UNLABELED_THRESHOLD
    min_proposal_area: int = DEFAULT_MIN_PROPOSAL_AREA
    batch_size: int = 32
    min_segment_area: int = 16
    ensemble_weight: float = 0.8
    classifier: str = DEFAULT_CLASSIFIER
    processing_size: ProcessingSize | str = DEFAULT_PROCESSING_SIZE
    rejection: float = DEFAULT_REJECTION
    known_map: bool = False

    def __setattr__(self, name: str, value: object) -> None:
        if name == "processing_size" and not isinstance(value, ProcessingSize):
            value = ProcessingSize.parse(value)  # type: ignore[arg-type]  # text, at any time
        super().__setattr__(name, value)


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


def semseg_maxima(
    table: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """table: (N, C + 1), column c < C the weighted class probabilities w_q p[q, c] of each
    mask, the last column its weight w_q; masks: (N, h, w) bool or float in [0, 1].
    semseg[k] = sum_q table[q, k] mask_q, computed in blocks of rows (AGGREGATION_CHUNK).
    Returns best: (h, w) float32, max_c semseg[c]; labels: (h, w) int64, its argmax (0 where
    semseg is all 0); coverage: (h, w) float32, semseg[C]."""
    height, width = masks.shape[1:]
    best = torch.empty((height, width), device=masks.device)
    labels = torch.empty((height, width), dtype=torch.int64, device=masks.device)
    coverage = torch.empty((height, width), device=masks.device)
    rows = max(1, AGGREGATION_CHUNK // (max(table.shape) * width))
    for top in range(0, height, rows):
        sums = torch.einsum("qk,qhw->khw", table, masks[:, top : top + rows].float())
        coverage[top : top + rows] = sums[-1]
        best[top : top + rows], labels[top : top + rows] = sums[:-1].max(dim=0)
    return best, labels, coverage


def linear_taps(out_size: int, in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear resampling of in_size samples to out_size along one axis, pixel centres aligned
    (as cv2.INTER_LINEAR and torch's align_corners=False, edges clamped): output i is
    (1 - frac[i]) * input[low[i]] + frac[i] * input[high[i]].
    Returns low, high: (out_size,) int64 in [0, in_size); frac: (out_size,) float32 in [0, 1]."""
    source = (
        (torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5
    ).clamp(min=0)
    low = source.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    return low, high, (source - low).clamp(max=1).float()


def resize_semseg_maxima(
    table: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """semseg_maxima(table, masks) of semseg bilinearly resized (linear_taps) from the masks'
    (h, w) to size (H, W): best, labels, coverage, each (H, W).

    semseg is computed at (h, w) in blocks of source rows (AGGREGATION_CHUNK values). Each output
    pixel mixes the semseg vectors of a 2x2 block of source pixels with weights >= 0; where those
    share their argmax, it is the argmax of the mix too, and best and coverage are the resized
    best and coverage. Only output pixels whose source block holds more than one label (class
    borders) are mixed from the full semseg vectors.
    """
    height, width = masks.shape[1:]
    row_low, row_high, row_frac = (t.to(masks.device) for t in linear_taps(size[0], height))
    col_low, col_high, col_frac = (t.to(masks.device) for t in linear_taps(size[1], width))
    out_best = torch.empty(size, device=masks.device)
    out_labels = torch.empty(size, dtype=torch.int64, device=masks.device)
    out_coverage = torch.empty(size, device=masks.device)
    step = max(1, AGGREGATION_CHUNK // (max(table.shape) * width) - 1)
    for top in range(0, height, step):
        # Source rows top .. top + step, one more than the block's: the lower taps' row.
        sums = torch.einsum("qk,qhw->khw", table, masks[:, top : top + step + 1].float())
        best, labels = sums[:-1].max(dim=0)
        first, end = torch.searchsorted(
            row_low, torch.tensor([top, top + step], device=masks.device)
        )
        low, high = row_low[first:end] - top, row_high[first:end] - top
        frac = row_frac[first:end, None]
        values = torch.stack([best, sums[-1]])
        values = torch.lerp(values.index_select(1, low), values.index_select(1, high), frac)
        values = torch.lerp(
            values.index_select(2, col_low), values.index_select(2, col_high), col_frac
        )
        out_best[first:end], out_coverage[first:end] = values
        out_labels[first:end] = labels.index_select(0, low).index_select(1, col_low)
        # mixed[y, x]: the 2x2 source block from (y, x) holds more than one label.
        mixed = torch.zeros_like(labels, dtype=torch.bool)
        mixed[:, :-1] |= labels[:, 1:] != labels[:, :-1]
        mixed[:-1] |= labels[1:] != labels[:-1]
        mixed[:-1, :-1] |= labels[1:, 1:] != labels[:-1, :-1]
        mixed = mixed.index_select(0, low).index_select(1, col_low)
        positions = mixed.flatten().nonzero().flatten()
        flat = sums.flatten(1)
        pixels = max(1, AGGREGATION_CHUNK // table.shape[1])
        for start in range(0, len(positions), pixels):
            position = positions[start : start + pixels]
            y, x = position // size[1], position % size[1]
            fy, fx = frac[y, 0], col_frac[x]
            mix = sum(
                weight * flat.index_select(1, rows[y] * width + cols[x])
                for rows, cols, weight in (
                    (low, col_low, (1 - fy) * (1 - fx)),
                    (low, col_high, (1 - fy) * fx),
                    (high, col_low, fy * (1 - fx)),
                    (high, col_high, fy * fx),
                )
            )
            mix_best, mix_labels = mix[:-1].max(dim=0)
            position = position + first * size[1]
            out_best.view(-1).index_copy_(0, position, mix_best)
            out_labels.view(-1).index_copy_(0, position, mix_labels)
            out_coverage.view(-1).index_copy_(0, position, mix[-1])
    return out_best, out_labels, out_coverage


def mask_weights(weights: torch.Tensor | None, masks: torch.Tensor) -> torch.Tensor:
    """(N,) float32 aggregation weights on the masks' device: `weights`, or 1 for each of the
    N masks when None."""
    if weights is None:
        return torch.ones(masks.shape[0], device=masks.device)
    return weights.to(masks.device).float()


def aggregate_scores(
    probabilities: torch.Tensor,
    masks: torch.Tensor,
    weights: torch.Tensor | None = None,
    unlabeled_threshold: float = 0.0,
    output_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel labels from per-mask class probabilities.

    probabilities: (N, C) in [0, 1]; masks: (N, h, w) bool or float in [0, 1]; weights: (N,) > 0
    or None (1); output_size: (H, W) of the labels and scores, None = (h, w).
    semseg[c] = sum_q w_q p[q, c] mask_q (the paper's einsum, with weights), bilinearly resized
    to (H, W) when that differs (as the reference resizes its class scores to the input's
    size); label = argmax_c semseg. Overlapping masks are normalised by the pixel's coverage
    sum_q w_q mask_q (resized alike): score = semseg[label] / coverage, the weighted mean of the
    covering masks' probabilities of that class, in [0, 1] (the argmax is unchanged by it).
    A mask whose probabilities are not all finite (NaN or inf, e.g. after an fp16 overflow in
    the image tower) is left out, so every score is finite.
    Returns labels: (H, W) int64, UNLABELED where no mask covers the pixel or the score is below
    unlabeled_threshold; scores: (H, W) float32, 0 where uncovered.
    """
    weights = mask_weights(weights, masks)
    probabilities = probabilities.to(masks.device).float()
    finite = probabilities.isfinite().all(dim=1)
    weights = torch.where(finite, weights, torch.zeros_like(weights))
    probabilities = torch.where(finite[:, None], probabilities, torch.zeros_like(probabilities))
    # One pass over the masks: column c < C gives semseg[c], the last column the coverage.
    table = torch.cat([probabilities * weights[:, None], weights[:, None]], dim=1)
    if output_size is None or tuple(output_size) == tuple(masks.shape[1:]):
        best, labels, coverage = semseg_maxima(table, masks)
    else:
        best, labels, coverage = resize_semseg_maxima(table, masks, tuple(output_size))
    covered = coverage > 0
    scores = torch.where(covered, best / coverage.clamp(min=1e-12), torch.zeros_like(best))
    labels[~covered | (scores < unlabeled_threshold)] = UNLABELED
    # One copy back to the host: labels (< 2^24, exact in float32) and scores together.
    both = torch.stack([labels.float(), scores.float()]).cpu().numpy()
    return both[0].astype(np.int64), both[1]


def aggregate_known(
    known: torch.Tensor,
    masks: torch.Tensor,
    weights: torch.Tensor | None = None,
    output_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Per-pixel probability that a pixel shows a vocabulary class, from per-mask ones.

    known: (N,) in [0, 1]; masks: (N, h, w) bool or float in [0, 1]; weights: (N,) > 0 or None;
    output_size: (H, W), None = (h, w). known_pixel = sum_q w_q known_q mask_q / sum_q w_q mask_q,
    numerator and denominator bilinearly resized to (H, W) first (as aggregate_scores resizes the
    class scores and the coverage). Masks with a non-finite known value are left out.
    Returns (H, W) float32, 1 where no mask covers the pixel.
    """
    weights = mask_weights(weights, masks)
    known = known.to(masks.device).float()
    weights = torch.where(known.isfinite(), weights, torch.zeros_like(weights))
    table = torch.stack([weights * known.nan_to_num(0.0), weights], dim=1)  # (N, 2)
    height, width = masks.shape[1:]
    sums = torch.empty((2, height, width), device=masks.device)
    rows = max(1, AGGREGATION_CHUNK // (max(masks.shape[0], 2) * width))
    for top in range(0, height, rows):
        sums[:, top : top + rows] = torch.einsum(
            "qk,qhw->khw", table, masks[:, top : top + rows].float()
        )
    if output_size is not None and tuple(output_size) != (height, width):
        sums = torch.nn.functional.interpolate(
            sums[None], size=tuple(output_size), mode="bilinear", align_corners=False
        )[0]
    covered = sums[1] > 0
    ratio = torch.where(covered, sums[0] / sums[1].clamp(min=1e-12), torch.ones_like(sums[0]))
    return ratio.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


class Stopwatch:
    """Wall time of pipeline stages in milliseconds; on CUDA it waits for the device first, so
    a stage's time includes its kernels."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.clock = time.perf_counter()

    def start(self) -> None:
        self.clock = time.perf_counter()

    def lap(self, timings: dict[str, float], stage: str) -> None:
        """timings[stage] = milliseconds since the last start() or lap()."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        timings[stage] = 1000.0 * (now - self.clock)
        self.clock = now


@dataclass
class FrameWork:
    """One image between the stages of segment_batch: the input image (H, W, 3) uint8, its
    processing image on the device (h, w, 3) uint8, its proposals and their masks (N, h, w) on
    the device, the indices (K,) of the masks stage 2 kept (set by stage 2) and its timings."""

    image: np.ndarray
    pixels: torch.Tensor
    proposals: Proposals
    masks: torch.Tensor
    timings: dict[str, float]
    kept: torch.Tensor | None = None


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
        self._rejection_calibration: RejectionCalibration | None = None

    @property
    def rejection_calibration(self) -> RejectionCalibration:
        """The open-set rejection's calibration for this CLIP, with its reference bank encoded
        on first use (rejection.rejection_calibration: one text-tower run of 224 sentences), so
        a segmenter that never rejects never pays it."""
        if self._rejection_calibration is None:
            self._rejection_calibration = rejection_calibration(self.clip)
        return self._rejection_calibration

    @property
    def learned_text(self) -> Callable[[list[str]], torch.Tensor] | None:
        """The text of the prompt templates value "learned" for a VocabularyEncoder(learned=...)
        on this segmenter's CLIP: names -> unit-norm embeddings through the learned prompt
        vectors of the proposal checkpoint's stage-2 adapter, or None when it has none."""
        return getattr(self.proposals, "stage_two_text", None)

    def prepare_vocabulary(self, vocabulary: EncodedVocabulary) -> None:
        """Computes now, on the calling thread, what the proposal generator derives from a new
        vocabulary (a maskformer's class-head text embeddings), so the first frame under it
        does not wait for the text tower."""
        text_embeddings = getattr(self.proposals, "text_embeddings", None)
        if text_embeddings is not None:
            text_embeddings(vocabulary)

    def _check_inputs(self, image: np.ndarray, vocabulary: EncodedVocabulary | None) -> None:
        check_image(image)
        if vocabulary is not None and vocabulary.text_embeddings.shape[1] != self.clip.embed_dim:
            raise ValueError(
                f"the vocabulary's text embeddings have {vocabulary.text_embeddings.shape[1]} "
                f"dimensions but {self.clip.name} embeds into {self.clip.embed_dim}; encode it "
                "with this segmenter's CLIP model"
            )

    def processing_image(self, image: np.ndarray) -> np.ndarray:
        """image (H, W, 3) uint8 RGB -> the image both stages see: image itself, or resized to
        config.processing_size.shape(H, W)."""
        return self.config.processing_size.apply(image)

    def propose(self, image: np.ndarray, vocabulary: EncodedVocabulary | None = None) -> Proposals:
        """Stage 1 alone: image (H, W, 3) uint8 RGB -> the mask proposals of its processing
        image (processing_image), for a later segment(image, vocabulary, proposals) with the same
        image (e.g. on another thread, as the node's pipeline). vocabulary: for generators that
        score their masks; None for class-agnostic masks alone."""
        self._check_inputs(image, vocabulary)
        processed = self.processing_image(image)
        return self.proposals(self._stage_one_input(processed), vocabulary)

    def upload(self, image: np.ndarray) -> torch.Tensor:
        """image (H, W, 3) uint8 -> the same as a tensor on the CLIP device: within one
        segment() call, the frame's one copy to the device, shared by both stages (propose()
        followed by segment() copies it in each)."""
        return torch.from_numpy(np.ascontiguousarray(image)).to(self.clip.device)

    def _stage_one_input(
        self, image: np.ndarray, pixels: torch.Tensor | None = None
    ) -> np.ndarray | torch.Tensor:
        """What the generator takes: for one that takes tensors the image on the device (pixels,
        or uploaded now when None), else the array."""
        if not getattr(self.proposals, "takes_tensors", False):  # any callable may generate
            return image
        return self.upload(image) if pixels is None else pixels

    def segment(
        self,
        image: np.ndarray,
        vocabulary: EncodedVocabulary,
        proposals: Proposals | None = None,
    ) -> Segmentation:
        """image: (H, W, 3) uint8 RGB (see check_image) -> Segmentation under `vocabulary`, at
        the image's resolution.

        Both stages see processing_image(image); the aggregation brings the class scores back
        to (H, W). proposals: propose(image, vocabulary) computed earlier (masks of the
        processing image's size), or None to run stage 1 here. timings_ms holds the wall time
        of: resize (only when the image is downscaled), proposals (only when run here), crops,
        clip_image, aggregation (with the resize back to (H, W)), segments.
        """
        return self.segment_batch([image], vocabulary, [proposals])[0]

    def segment_batch(
        self,
        images: list[np.ndarray],
        vocabulary: EncodedVocabulary,
        proposals: list[Proposals | None] | None = None,
    ) -> list[Segmentation]:
        """segment() of several images at once (e.g. one frame of each camera), one result per
        image, each equal to segment(image) up to float rounding.

        Stage 1 and the aggregation run per image; stage 2's CLIP forwards are shared: the crop
        classifier embeds every image's crops in one sequence of batches of config.batch_size,
        the dense one runs one frame forward per group of images of the same patch grid. The
        shared clip_image time is in every result's timings_ms. proposals: one entry per image
        (None: run stage 1 here), or None for all.
        """
        proposals = [None] * len(images) if proposals is None else list(proposals)
        if len(proposals) != len(images):
            raise ValueError(f"{len(images)} images but {len(proposals)} proposal entries")
        if not images:
            return []
        for image in images:
            self._check_inputs(image, vocabulary)
        if self.config.classifier not in ("crop", "dense"):
            raise ValueError(
                f"classifier must be 'crop' or 'dense', got {self.config.classifier!r}"
            )
        clock = Stopwatch(self.clip.device)
        frames = [self._stage_one(image, given, vocabulary, clock) for image, given in
                  zip(images, proposals, strict=True)]  # fmt: skip
        embeddings = self._embed(frames, clock)
        return [
            self._aggregate(frame, frame_embeddings, vocabulary, clock)
            for frame, frame_embeddings in zip(frames, embeddings, strict=True)
        ]

    def _stage_one(
        self,
        image: np.ndarray,
        proposals: Proposals | None,
        vocabulary: EncodedVocabulary,
        clock: Stopwatch,
    ) -> FrameWork:
        """The processing image on the device and its proposals (run here when None), with the
        masks stage 2 classifies."""
        timings: dict[str, float] = {}
        clock.start()
        processed = self.processing_image(image)
        if processed is not image:
            clock.lap(timings, "resize")
        pixels = self.upload(processed)
        if proposals is None:
            proposals = self.proposals(self._stage_one_input(processed, pixels), vocabulary)
            clock.lap(timings, "proposals")
        elif tuple(proposals.masks.shape[1:]) != processed.shape[:2]:
            raise ValueError(
                f"the proposals' masks are {tuple(proposals.masks.shape[1:])} but this "
                f"{image.shape[0]}x{image.shape[1]} image is processed at {processed.shape[:2]} "
                f"(processing_size {self.config.processing_size}); make them with "
                "propose(image, ...)"
            )
        return FrameWork(image, pixels, proposals, proposals.masks.to(self.clip.device), timings)

    def _embed(self, frames: list[FrameWork], clock: Stopwatch) -> list[torch.Tensor]:
        """Sets each frame's kept masks (crops lap) and returns their CLIP embeddings, one
        (K_i, D) tensor per frame (clip_image lap, shared)."""
        config = self.config
        if config.classifier == "dense":
            binaries = []
            for frame in frames:
                clock.start()
                binary, frame.kept = usable_masks(
                    frame.masks, config.mask_threshold, config.min_proposal_area
                )
                binaries.append(binary)
                clock.lap(frame.timings, "crops")
            clock.start()
            embeddings = self.dense.batch_mask_embeddings([f.pixels for f in frames], binaries)
        else:
            crops = []
            for frame in frames:
                clock.start()
                crops.append(
                    self.classifier.make_crops(
                        frame.pixels, frame.masks, config.mask_threshold, config.min_proposal_area
                    )
                )
                frame.kept = crops[-1].kept
                clock.lap(frame.timings, "crops")
            clock.start()
            unique = self.classifier.embed(
                torch.cat([c.crops for c in crops]), config.batch_size
            ).split([len(c.crops) for c in crops])
            embeddings = [e[c.inverse] for e, c in zip(unique, crops, strict=True)]
        shared: dict[str, float] = {}
        clock.lap(shared, "clip_image")
        for frame in frames:
            frame.timings.update(shared)
        return embeddings

    def _aggregate(
        self,
        frame: FrameWork,
        embeddings: torch.Tensor,
        vocabulary: EncodedVocabulary,
        clock: Stopwatch,
    ) -> Segmentation:
        """Per-pixel labels of one frame from its masks' embeddings, and its segments."""
        config = self.config
        clock.start()
        proposals, masks, kept = frame.proposals, frame.masks, frame.kept
        clip_probs = clip_probabilities(
            embeddings, vocabulary.text_embeddings.to(embeddings.device)
        )
        weights = None if proposals.weights is None else proposals.weights.to(masks.device)
        known = None
        if config.rejection > 0 or config.known_map:
            known = known_probabilities(
                embeddings, vocabulary.text_embeddings, self.rejection_calibration
            ).to(masks.device)
        if proposals.class_scores is not None and config.ensemble_weight > 0:
            # As the reference: masks left empty by the threshold keep p_clip = 1.
            full = torch.ones((len(proposals), vocabulary.num_classes), device=masks.device)
            full[kept] = clip_probs.to(masks.device)
            probabilities = ensemble_probabilities(
                full,
                proposals.class_scores.to(masks.device),
                config.ensemble_weight,
                proposals.trained_classes,
            )
            if known is not None:  # masks CLIP did not see give no evidence either way
                known = torch.ones(len(proposals), device=masks.device).index_copy(0, kept, known)
        else:
            probabilities = clip_probs
            if len(kept) < len(masks):
                masks = masks[kept]
                weights = None if weights is None else weights[kept]
        labels, scores = aggregate_scores(
            probabilities, masks, weights, config.unlabeled_threshold, frame.image.shape[:2]
        )
        known_pixels, unknown = None, None
        if known is not None:
            known_pixels = aggregate_known(known, masks, weights, frame.image.shape[:2])
        if known_pixels is not None and config.rejection > 0:
            unknown = (labels != UNLABELED) & (known_pixels < config.rejection)
            labels[unknown] = UNLABELED
        clock.lap(frame.timings, "aggregation")
        labels = labels.astype(np.uint16)
        segments = extract_segments(labels, scores, vocabulary.class_names, config.min_segment_area)
        clock.lap(frame.timings, "segments")
        return Segmentation(
            labels=labels,
            scores=scores,
            class_names=list(vocabulary.class_names),
            vocabulary_version=vocabulary.version,
            segments=segments,
            timings_ms=frame.timings,
            known=known_pixels,
            unknown=unknown,
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
    proposal_model: str | None = None,
    head_prompts: str | Sequence[str] | None = None,
    trained_classes: Sequence[str] | None = None,
) -> TwoStageSegmenter:
    """Loads CLIP (clip_model.load_clip: exactly one of pretrained, checkpoint, random_weights)
    and builds the named proposal generator capped at max_proposals masks per image.

    proposal_checkpoint: weights of a learned generator ("maskformer"; None = its bundled
    default), which also gets the CLIP model and device; refused for training-free ones.
    "sam" / "sam2" need proposal_checkpoint and take proposal_model, their model type (None or
    "": read from the checkpoint); they run on CLIP's device. head_prompts and trained_classes:
    the "maskformer" class head's prompts and seen classes (see MaskFormerProposalGenerator;
    paper.PaperSetting gives the reference's), refused for other generators.
    """
    check_proposal_model(proposal_generator, proposal_model)
    clip = load_clip(
        model,
        pretrained=pretrained,
        checkpoint=checkpoint,
        device=device,
        precision=precision,
        random_weights=random_weights,
        compile_image_tower=compile_image_tower,
    )
    if proposal_generator != "maskformer" and (head_prompts is not None or trained_classes):
        raise ValueError("class-head prompts and trained classes are for the maskformer generator")
    settings: dict[str, object] = {"max_proposals": max_proposals}
    if proposal_generator == "maskformer":
        settings.update(
            checkpoint=proposal_checkpoint,
            clip=clip,
            device=str(clip.device),
            head_prompts=head_prompts,
            trained_classes=trained_classes,
        )
    elif proposal_generator == "hierarchy":
        settings.update(device=clip.device)
    elif proposal_generator in SAM_GENERATORS:
        settings.update(
            checkpoint=proposal_checkpoint, model=proposal_model or None, device=str(clip.device)
        )
    elif proposal_checkpoint:
        raise ValueError(f"proposal generator {proposal_generator!r} takes no checkpoint")
    proposals = build_proposal_generator(proposal_generator, **settings)
    return TwoStageSegmenter(clip, proposals, config)
