"""Open-set evaluation: hide some of a dataset's classes from the vocabulary and measure how
well the known map (Segmentation.known, rejection.py) tells their pixels from the others.

For each hidden subset (hidden_subsets: random, fixed seeds, never the background) the segmenter
runs once per image on the visible classes with `config.known_map = True, config.rejection = 0`;
every rejection strength t is then applied to the same result: a pixel with known < t is unknown
(as the segmenter does with `rejection = t`). Pixel counts, over the pixels that are not ignored:

- hidden_rejected: of the pixels whose ground truth is a hidden class, the share labelled
  unknown (rejected, or UNLABELED for any other reason: no mask, unlabeled_threshold);
- known_kept: of the pixels whose ground truth is a visible class, the share that keep a label
  (right or wrong);
- miou: the in-vocabulary mIoU, over the visible classes with ground-truth pixels. Prediction
  and ground truth both get one extra class, "unknown": hidden ground truth is unknown, and so is
  an unlabeled prediction. A hidden pixel given a visible class is a false positive of that
  class; a visible pixel left unknown is a false negative of its class. So rejection helps
  where it removes false labels from hidden things and costs where it removes known pixels.
  Strength 0 is the segmenter without rejection;
- unknown_iou: IoU of the unknown class itself (hidden ground truth vs unknown prediction);
- auroc: of the known map as a score of visible (positive) vs hidden (negative) pixels,
  strength-free, from histograms of AUROC_BINS bins on [0, 1] (ties within a bin count half).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ovseg_ros.engine.datasets import Sample
from ovseg_ros.engine.vocabulary import EncodedVocabulary

DEFAULT_STRENGTHS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Rejection strengths of the operating points; 0 = no rejection."""
AUROC_BINS = 1 << 16
"""Bins of the known-map histograms the AUROC is computed from."""


@dataclass(frozen=True)
class HiddenSubset:
    """One open-set split: hidden, the classes left out of the vocabulary; visible, the
    vocabulary (the dataset's other classes, in dataset order)."""

    hidden: tuple[str, ...]
    visible: tuple[str, ...]


def hidden_subsets(
    class_names: Sequence[str],
    count: int = 3,
    size: int = 2,
    seed: int = 0,
    never: Sequence[str] = ("background",),
) -> list[HiddenSubset]:
    """`count` distinct random subsets of `size` classes to hide, drawn with
    numpy.random.default_rng(seed) from class_names minus `never` (the same arguments give the
    same subsets). ValueError when there are not `count` distinct subsets to draw."""
    candidates = [name for name in class_names if name not in never]
    if size < 1 or size >= len(class_names) or size > len(candidates):
        raise ValueError(
            f"cannot hide {size} of the {len(candidates)} classes that may be hidden "
            f"({len(class_names)} in all, at least one must stay visible)"
        )
    combinations = _n_choose_k(len(candidates), size)
    if count > combinations:
        raise ValueError(f"asked for {count} hidden subsets, only {combinations} exist")
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, ...]] = []
    while len(chosen) < count:
        draw = tuple(sorted(int(i) for i in rng.choice(len(candidates), size, replace=False)))
        if draw not in chosen:
            chosen.append(draw)
    subsets = []
    for draw in chosen:
        hidden = {candidates[i] for i in draw}
        subsets.append(
            HiddenSubset(
                hidden=tuple(n for n in class_names if n in hidden),
                visible=tuple(n for n in class_names if n not in hidden),
            )
        )
    return subsets


def _n_choose_k(n: int, k: int) -> int:
    result = 1
    for i in range(k):
        result = result * (n - i) // (i + 1)
    return result


@dataclass
class OperatingPoint:
    """Figures at one rejection strength (see the module docstring); shares in [0, 1]."""

    strength: float
    hidden_rejected: float
    known_kept: float
    miou: float
    unknown_iou: float


@dataclass
class SubsetResult:
    """One hidden subset: its AUROC, pixel counts (not ignored) of hidden and visible ground
    truth, and one operating point per strength."""

    subset: HiddenSubset
    auroc: float
    hidden_pixels: int
    known_pixels: int
    points: list[OperatingPoint]


@dataclass
class OpenSetEvaluation:
    """All subsets, and their unweighted mean: auroc and one OperatingPoint per strength."""

    subsets: list[SubsetResult]
    auroc: float
    points: list[OperatingPoint]
    num_images: int


class OpenSetAccumulator:
    """Pixel statistics of one hidden subset over images.

    num_visible: V, the vocabulary's classes; strengths: the rejection strengths.
    add() takes each image's labels and known map with its ground truth in vocabulary indices.
    """

    def __init__(self, num_visible: int, strengths: Sequence[float] = DEFAULT_STRENGTHS) -> None:
        self.num_visible = num_visible
        self.strengths = tuple(float(s) for s in strengths)
        # confusion[t, g, p]: g, p in [0, V], V = unknown (hidden ground truth, unlabeled pixel).
        self.confusion = np.zeros((len(self.strengths), num_visible + 1, num_visible + 1), np.int64)
        self.known_histogram = np.zeros(AUROC_BINS, np.int64)
        self.hidden_histogram = np.zeros(AUROC_BINS, np.int64)

    def add(self, labels: np.ndarray, known: np.ndarray, truth: np.ndarray) -> None:
        """labels: (H, W) vocabulary index or UNLABELED (any value >= V counts as unlabeled);
        known: (H, W) float in [0, 1]; truth: (H, W) int, vocabulary index in [0, V), V for a
        hidden class, < 0 for ignored pixels."""
        if not labels.shape == known.shape == truth.shape:
            raise ValueError(
                f"labels {labels.shape}, known {known.shape} and truth {truth.shape} differ"
            )
        unknown = self.num_visible
        keep = truth.ravel() >= 0
        gt = truth.ravel()[keep].astype(np.int64)
        score = known.ravel()[keep].astype(np.float64)
        pred = np.minimum(labels.ravel()[keep].astype(np.int64), unknown)
        size = (unknown + 1) ** 2
        for index, strength in enumerate(self.strengths):
            rejected = np.where(score < strength, unknown, pred)
            pairs = gt * (unknown + 1) + rejected
            self.confusion[index] += np.bincount(pairs, minlength=size).reshape(unknown + 1, -1)
        bins = np.clip((score * AUROC_BINS).astype(np.int64), 0, AUROC_BINS - 1)
        hidden = gt == unknown
        self.known_histogram += np.bincount(bins[~hidden], minlength=AUROC_BINS)
        self.hidden_histogram += np.bincount(bins[hidden], minlength=AUROC_BINS)

    @property
    def hidden_pixels(self) -> int:
        return int(self.hidden_histogram.sum())

    @property
    def known_pixels(self) -> int:
        return int(self.known_histogram.sum())

    def auroc(self) -> float:
        """known_histogram_auroc of the pixels so far (NaN without both kinds)."""
        return histogram_auroc(self.known_histogram, self.hidden_histogram)

    def points(self) -> list[OperatingPoint]:
        """One OperatingPoint per strength (NaN shares where their pixels are absent)."""
        unknown = self.num_visible
        points = []
        for strength, counts in zip(self.strengths, self.confusion, strict=True):
            gt_total = counts.sum(axis=1)
            pred_total = counts.sum(axis=0)
            hits = np.diag(counts)
            union = gt_total + pred_total - hits
            present = gt_total[:unknown] > 0
            ious = hits[:unknown][present] / union[:unknown][present]
            points.append(
                OperatingPoint(
                    strength=strength,
                    hidden_rejected=_share(counts[unknown, unknown], gt_total[unknown]),
                    known_kept=_share(counts[:unknown, :unknown].sum(), gt_total[:unknown].sum()),
                    miou=float(ious.mean()) if len(ious) else float("nan"),
                    unknown_iou=_share(hits[unknown], union[unknown]),
                )
            )
        return points


def _share(part: int | np.integer, whole: int | np.integer) -> float:
    return float(part / whole) if whole > 0 else float("nan")


def histogram_auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """AUROC of a score from histograms over the same ascending bins: the probability that a
    positive scores above a negative, ties (same bin) counting half; NaN without both."""
    positive = np.asarray(positive, np.float64)
    negative = np.asarray(negative, np.float64)
    total = positive.sum() * negative.sum()
    if total == 0:
        return float("nan")
    below = np.cumsum(negative) - negative
    return float((positive * (below + 0.5 * negative)).sum() / total)


def truth_in_vocabulary(
    label: np.ndarray, class_names: Sequence[str], subset: HiddenSubset, ignore_index: int
) -> np.ndarray:
    """label: (H, W) dataset class index or ignore_index -> (H, W) int64: index into
    subset.visible, len(subset.visible) for a hidden class, -1 where ignored."""
    lookup = np.array(
        [
            subset.visible.index(name) if name in subset.visible else len(subset.visible)
            for name in class_names
        ],
        dtype=np.int64,
    )
    ignored = label == ignore_index
    return np.where(ignored, -1, lookup[np.where(ignored, 0, label)])


@contextlib.contextmanager
def _known_map_on(config: object) -> Iterator[None]:
    """config.known_map = True, config.rejection = 0 inside; the values before restored after."""
    before = (config.known_map, config.rejection)
    config.known_map, config.rejection = True, 0.0
    try:
        yield
    finally:
        config.known_map, config.rejection = before


def evaluate_open_set(
    segmenter: object,
    encode: Callable[[Sequence[str]], EncodedVocabulary],
    samples: Iterable[Sample],
    class_names: Sequence[str],
    ignore_index: int,
    subsets: Sequence[HiddenSubset],
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    on_image: Callable[[int], None] | None = None,
) -> OpenSetEvaluation:
    """Runs segmenter (a TwoStageSegmenter, or anything with .config and
    .segment(image, vocabulary) giving a Segmentation with .known) on every sample under each
    subset's visible classes, encoded with encode(names) (e.g. VocabularyEncoder(clip).encode),
    and returns the figures of the module docstring. samples is iterated once per subset (a
    dataset, not a generator). on_image(done) is called after each image of each subset."""
    results = []
    done = 0
    num_images = 0
    with _known_map_on(segmenter.config):
        for subset in subsets:
            vocabulary = encode(list(subset.visible))
            accumulator = OpenSetAccumulator(len(subset.visible), strengths)
            num_images = 0
            for sample in samples:
                if sample.label is None:
                    raise ValueError(f"sample {sample.name} has no label map")
                segmentation = segmenter.segment(sample.image, vocabulary)
                if segmentation.known is None:
                    raise ValueError("the segmenter returned no known map (config.known_map)")
                truth = truth_in_vocabulary(sample.label, class_names, subset, ignore_index)
                accumulator.add(segmentation.labels, segmentation.known, truth)
                num_images += 1
                done += 1
                if on_image is not None:
                    on_image(done)
            results.append(
                SubsetResult(
                    subset=subset,
                    auroc=accumulator.auroc(),
                    hidden_pixels=accumulator.hidden_pixels,
                    known_pixels=accumulator.known_pixels,
                    points=accumulator.points(),
                )
            )
    return OpenSetEvaluation(
        subsets=results,
        auroc=_mean([r.auroc for r in results]),
        points=[
            OperatingPoint(
                strength=float(strength),
                hidden_rejected=_mean([r.points[i].hidden_rejected for r in results]),
                known_kept=_mean([r.points[i].known_kept for r in results]),
                miou=_mean([r.points[i].miou for r in results]),
                unknown_iou=_mean([r.points[i].unknown_iou for r in results]),
            )
            for i, strength in enumerate(strengths)
        ],
        num_images=num_images,
    )


def _mean(values: list[float]) -> float:
    """Mean of the values that are not NaN; NaN when none is."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def operating_points_markdown(
    evaluation: OpenSetEvaluation, recommended: float | None = None
) -> str:
    """A markdown table of the mean operating points (percent), preceded by the AUROC and the
    hidden subsets; the row of `recommended` is marked."""
    hidden = "; ".join(", ".join(r.subset.hidden) for r in evaluation.subsets)
    lines = [
        f"AUROC known vs hidden pixels: {evaluation.auroc:.3f} (mean of "
        f"{len(evaluation.subsets)} subsets, hidden: {hidden}; {evaluation.num_images} images)",
        "",
        "| strength | hidden -> unknown | known kept | in-vocab mIoU | unknown IoU |",
        "|---:|---:|---:|---:|---:|",
    ]
    for point in evaluation.points:
        mark = " (recommended)" if recommended is not None and point.strength == recommended else ""
        lines.append(
            f"| {point.strength:g}{mark} | {100 * point.hidden_rejected:.1f} | "
            f"{100 * point.known_kept:.1f} | {100 * point.miou:.1f} | "
            f"{100 * point.unknown_iou:.1f} |"
        )
    return "\n".join(lines)
