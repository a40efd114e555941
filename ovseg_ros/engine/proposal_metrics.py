"""Class-agnostic figures of stage 1: how well the mask proposals cover the ground-truth objects.

Per object: the best IoU any proposal reaches with it (best_iou_per_instance). Over a dataset
(ProposalStats -> ProposalFigures): the mean of those best IoUs, the recall at IoU 0.5 and 0.75
(the fraction of objects whose best IoU reaches the threshold), the mean number of proposals and
the mean stage-1 wall time per frame. Class names play no part: a proposal generator can be
judged on any images with instance masks.

Matching happens at the proposals' size: when stage 1 ran on a resized processing image, the
instance map is resized to the masks' size (nearest neighbour) first; an object too small to
survive a downscale counts as missed (best IoU 0). Pixels with a negative instance id (void, e.g.
VOC's object boundaries) count neither for an object nor against a proposal.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

RECALL_THRESHOLDS = (0.5, 0.75)
MASK_THRESHOLD = 0.5
"""Soft (float) masks are binarised as mask > MASK_THRESHOLD; bool masks are used as they are."""
_CHUNK_ELEMENTS = 1 << 23
"""Masks are matched in chunks of about this many pixels (32 MiB of float32) at a time."""


def resize_instances(instances: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) instance map -> (height, width), nearest neighbour (OpenCV's INTER_NEAREST
    sampling: source index floor(i * H / height)); the map itself when the size matches."""
    src_h, src_w = instances.shape
    if (src_h, src_w) == (height, width):
        return instances
    rows = np.minimum((np.arange(height) * src_h) // height, src_h - 1)
    cols = np.minimum((np.arange(width) * src_w) // width, src_w - 1)
    return instances[rows[:, None], cols[None, :]]


def best_ious(masks: torch.Tensor, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each object of `instances`, the best IoU of any mask.

    masks: (N, h, w) bool, or float binarised at MASK_THRESHOLD, on any device (matched on the
    CPU); instances: (H, W) int, 0 = no object, k >= 1 = object k, < 0 = void; resized to
    (h, w) first when its size differs. Returns (ids, ious): the object ids present in
    `instances` (increasing) and, for each, the best IoU in [0, 1] (0 with no masks).
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"instances must be (H, W), got shape {instances.shape}")
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    ids = np.unique(instances)
    ids = ids[ids > 0]
    if len(ids) == 0 or masks.shape[0] == 0:
        return ids, np.zeros(len(ids))
    height, width = int(masks.shape[1]), int(masks.shape[2])
    small = resize_instances(instances, height, width).ravel()
    # Column of each pixel: 0 for no object, j + 1 for ids[j]; void pixels are dropped.
    lookup = np.zeros(int(ids[-1]) + 1, dtype=np.int64)
    lookup[ids] = np.arange(1, len(ids) + 1)
    valid = small >= 0
    keep = None if valid.all() else torch.from_numpy(np.flatnonzero(valid))
    column = torch.from_numpy(lookup[small[valid] if keep is not None else small])
    onehot = torch.zeros((len(column), len(ids) + 1), dtype=torch.float32)
    onehot[torch.arange(len(column)), column] = 1.0
    onehot = onehot[:, 1:]  # (V, K): the objects' pixels
    object_area = onehot.sum(dim=0)  # (K,)

    masks = masks.detach()
    flat = masks.reshape(masks.shape[0], -1)
    best = torch.zeros(len(ids))
    chunk = max(1, _CHUNK_ELEMENTS // max(len(column), 1))
    for start in range(0, flat.shape[0], chunk):
        part = flat[start : start + chunk].cpu()
        binary = part if part.dtype == torch.bool else part > MASK_THRESHOLD
        if keep is not None:
            binary = binary[:, keep]
        binary = binary.float()  # (n, V)
        intersection = binary @ onehot  # (n, K)
        union = binary.sum(dim=1, keepdim=True) + object_area - intersection
        iou = intersection / union.clamp(min=1.0)
        best = torch.maximum(best, iou.max(dim=0).values)
    return ids, best.double().numpy()


def best_iou_per_instance(masks: torch.Tensor, instances: np.ndarray) -> list[float]:
    """Proposal recall: for each ground-truth instance, the IoU of the best-matching proposal.

    masks: (N, h, w) proposals (bool, or float binarised at 0.5; any device); instances: (H, W)
    int, 0 = background, k >= 1 = instance k. Returns one IoU in [0, 1] per instance present, in
    increasing k (see best_ious)."""
    return [float(v) for v in best_ious(masks, instances)[1]]


def _nan_to_none(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass
class ProposalFigures:
    """Class-agnostic stage-1 figures over a dataset.

    num_images: frames; num_objects: ground-truth objects over all frames; mean_best_iou: mean
    over objects of the best IoU of any proposal (NaN with no objects); recall_50, recall_75:
    fraction of objects whose best IoU is >= 0.5 / >= 0.75 (NaN with no objects);
    proposals_per_frame: mean number of masks stage 1 returned; stage1_ms: mean stage-1 wall
    time per frame in milliseconds (NaN when not timed).
    """

    num_images: int
    num_objects: int
    mean_best_iou: float
    recall_50: float
    recall_75: float
    proposals_per_frame: float
    stage1_ms: float

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: NaN becomes None."""
        return {key: _nan_to_none(value) for key, value in asdict(self).items()}

    def summary(self) -> str:
        """One line, e.g. "proposals: mean best IoU 0.652, recall@0.5 0.68, recall@0.75 0.41,
        87.3 per frame, stage 1 41.2 ms (312 objects)"."""
        return (
            f"proposals: mean best IoU {self.mean_best_iou:.3f}, recall@0.5 {self.recall_50:.2f}"
            f", recall@0.75 {self.recall_75:.2f}, {self.proposals_per_frame:.1f} per frame, "
            f"stage 1 {self.stage1_ms:.1f} ms ({self.num_objects} objects)"
        )

    def markdown(self) -> list[str]:
        """A small markdown table (lines)."""

        def number(value: float, digits: int) -> str:
            return "n/a" if math.isnan(value) else f"{value:.{digits}f}"

        return [
            "| proposals (class-agnostic) | value |",
            "| --- | ---: |",
            f"| mean best IoU | {number(self.mean_best_iou, 3)} |",
            f"| recall@0.5 | {number(self.recall_50, 3)} |",
            f"| recall@0.75 | {number(self.recall_75, 3)} |",
            f"| proposals / frame | {number(self.proposals_per_frame, 1)} |",
            f"| stage 1 ms / frame | {number(self.stage1_ms, 1)} |",
            f"| objects | {self.num_objects} |",
        ]


class ProposalStats:
    """Accumulates per-frame matches into ProposalFigures."""

    def __init__(self) -> None:
        self.best: list[np.ndarray] = []
        self.counts: list[int] = []
        self.times_ms: list[float] = []

    def add(
        self, masks: torch.Tensor, instances: np.ndarray, stage1_ms: float | None = None
    ) -> np.ndarray:
        """Adds one frame: its proposals' masks (N, h, w), its instance map (H, W) and the
        stage-1 wall time; returns the frame's best IoU per object (best_ious)."""
        _, ious = best_ious(masks, instances)
        self.best.append(ious)
        self.counts.append(int(masks.shape[0]))
        if stage1_ms is not None:
            self.times_ms.append(float(stage1_ms))
        return ious

    def figures(self) -> ProposalFigures:
        ious = np.concatenate(self.best) if self.best else np.zeros(0)
        nan = float("nan")
        return ProposalFigures(
            num_images=len(self.counts),
            num_objects=len(ious),
            mean_best_iou=float(ious.mean()) if len(ious) else nan,
            recall_50=float((ious >= RECALL_THRESHOLDS[0]).mean()) if len(ious) else nan,
            recall_75=float((ious >= RECALL_THRESHOLDS[1]).mean()) if len(ious) else nan,
            proposals_per_frame=float(np.mean(self.counts)) if self.counts else nan,
            stage1_ms=float(np.mean(self.times_ms)) if self.times_ms else nan,
        )
