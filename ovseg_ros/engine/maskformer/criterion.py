"""MaskFormer's training loss: bipartite (Hungarian) matching of queries to ground-truth masks,
then a classification loss on every query and mask losses on the matched ones, for the final
decoder layer and, with deep supervision, for every earlier layer too.

As in the reference: matching cost = class_weight * (-p[target class]) + mask_weight * focal
cost + dice_weight * dice cost, with targets resized (nearest) to the prediction grid; losses:
cross-entropy over the C classes plus non-object (whose weight is no_object_weight), sigmoid
focal (or BCE) and dice on the matched masks upsampled (bilinear) to the target size, each
summed over masks and divided by the number of target masks in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MASK_LOSSES = ("focal", "bce")


def linear_sum_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of a (R, C) cost matrix: every row of the smaller side gets a
    distinct partner. Returns (rows, cols) int64 index arrays, sorted by row.

    Shortest augmenting paths with potentials (the Hungarian method, O(n^2 m)).
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be 2D, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost contains NaN or infinite values")
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:
        cost = cost.T
    rows, cols = cost.shape
    # 1-based arrays; column 0 is a virtual start.
    u = np.zeros(rows + 1)
    v = np.zeros(cols + 1)
    match = np.zeros(cols + 1, dtype=np.int64)  # match[j] = row assigned to column j
    way = np.zeros(cols + 1, dtype=np.int64)
    for row in range(1, rows + 1):
        match[0] = row
        column = 0
        min_to = np.full(cols + 1, np.inf)
        used = np.zeros(cols + 1, dtype=bool)
        while True:
            used[column] = True
            current_row = match[column]
            reduced = cost[current_row - 1] - u[current_row] - v[1:]
            free = ~used[1:]
            better = free & (reduced < min_to[1:])
            min_to[1:][better] = reduced[better]
            way[1:][better] = column
            candidates = np.where(free, min_to[1:], np.inf)
            next_column = int(np.argmin(candidates)) + 1
            delta = candidates[next_column - 1]
            u[match[used]] += delta
            v[used] -= delta
            min_to[1:][free] -= delta
            column = next_column
            if match[column] == 0:
                break
        while column:
            previous = way[column]
            match[column] = match[previous]
            column = previous
    assigned = np.nonzero(match[1:])[0]
    row_index = match[1:][assigned] - 1
    col_index = assigned
    if transposed:
        row_index, col_index = col_index, row_index
    order = np.argsort(row_index)
    return row_index[order].astype(np.int64), col_index[order].astype(np.int64)


def _pixel_weights(logits: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(P,) weights of the pixels in a mean: 1 / P each, or valid / sum(valid)."""
    if valid is None:
        return torch.full((logits.shape[-1],), 1.0 / logits.shape[-1], device=logits.device)
    return valid.float() / valid.float().sum().clamp(min=1.0)


def batch_focal_cost(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """logits: (Q, P); targets: (T, P) in {0, 1}; valid: (P,) {0, 1} or None -> (Q, T) focal
    loss of each pairing, mean over the (valid) pixels."""
    prob = logits.sigmoid()
    weights = _pixel_weights(logits, valid)
    positive = (1 - prob) ** gamma * F.softplus(-logits) * alpha * weights
    negative = prob**gamma * F.softplus(logits) * (1 - alpha) * weights
    return positive @ targets.T + negative @ (1 - targets).T


def batch_bce_cost(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """logits: (Q, P); targets: (T, P) in {0, 1} -> (Q, T) BCE of each pairing, mean over the
    (valid) pixels."""
    weights = _pixel_weights(logits, valid)
    return (F.softplus(-logits) * weights) @ targets.T + (F.softplus(logits) * weights) @ (
        1 - targets
    ).T


def batch_dice_cost(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """logits: (Q, P); targets: (T, P) -> (Q, T) dice loss 1 - (2|p t| + 1) / (|p| + |t| + 1),
    over the valid pixels only when valid (P,) is given."""
    prob = logits.sigmoid()
    if valid is not None:
        prob, targets = prob * valid, targets * valid
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """(M, P) logits and targets, valid (M, P) or None -> (M,) sigmoid focal loss, mean over the
    (valid) pixels."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return _masked_mean(alpha_t * ce * (1 - p_t) ** gamma, valid)


def bce_loss(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """(M, P) logits and targets, valid (M, P) or None -> (M,) BCE, mean over (valid) pixels."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return _masked_mean(ce, valid)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(M, P) -> (M,) mean over the last axis, or over its valid entries."""
    if valid is None:
        return values.mean(1)
    return (values * valid).sum(1) / valid.sum(1).clamp(min=1.0)


def dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """(M, P) logits and targets, valid (M, P) or None -> (M,) dice loss (valid pixels only)."""
    prob = logits.sigmoid()
    if valid is not None:
        prob, targets = prob * valid, targets * valid
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


@dataclass
class Target:
    """Ground truth of one image: labels (T,) int64 class indices in [0, C); masks (T, H, W)
    float {0, 1} at the (padded) input size. One mask per class present (semantic).

    valid: (H, W) float {0, 1}, the pixels the mask losses and costs count; None counts all
    (the reference: ignored pixels are simply 0 in every target mask).
    """

    labels: torch.Tensor
    masks: torch.Tensor
    valid: torch.Tensor | None = None


@dataclass(frozen=True)
class LossWeights:
    """The reference's weights: class 1, focal 20, dice 1, non-object class 0.1."""

    class_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    no_object_weight: float = 0.1


class SetCriterion:
    """Loss of MaskFormer outputs against per-image targets.

    __call__(mask_logits (L, B, Q, h, w), class_logits (L, B, Q, C + 1), targets: B Targets)
    -> dict of scalar losses (already weighted): "loss_ce", "loss_mask", "loss_dice" for the
    last layer, and the same with suffix "_k" for earlier layer k when deep_supervision.
    """

    def __init__(
        self,
        weights: LossWeights = LossWeights(),  # noqa: B008 - frozen dataclass, never mutated
        mask_loss: str = "focal",
        deep_supervision: bool = True,
    ):
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"mask_loss must be one of {MASK_LOSSES}, got {mask_loss!r}")
        self.weights = weights
        self.mask_loss = mask_loss
        self.deep_supervision = deep_supervision

    @torch.no_grad()
    def match(
        self, mask_logits: torch.Tensor, class_logits: torch.Tensor, targets: list[Target]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image (query indices, target indices) of the minimum-cost matching.

        mask_logits: (B, Q, h, w); class_logits: (B, Q, C + 1).
        """
        indices = []
        for logits, scores, target in zip(mask_logits, class_logits, targets, strict=True):
            if len(target.labels) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            prob = scores.float().softmax(-1)
            cost_class = -prob[:, target.labels]
            small = F.interpolate(target.masks[:, None].float(), size=logits.shape[-2:])
            flat_targets = small[:, 0].flatten(1)
            flat_logits = logits.float().flatten(1)
            valid = None
            if target.valid is not None:
                valid = F.interpolate(target.valid[None, None].float(), size=logits.shape[-2:])
                valid = valid.flatten()
            pixel_cost = (
                batch_focal_cost(flat_logits, flat_targets, valid=valid)
                if self.mask_loss == "focal"
                else batch_bce_cost(flat_logits, flat_targets, valid=valid)
            )
            cost = (
                self.weights.class_weight * cost_class
                + self.weights.mask_weight * pixel_cost
                + self.weights.dice_weight * batch_dice_cost(flat_logits, flat_targets, valid)
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.from_numpy(rows), torch.from_numpy(cols)))
        return indices

    def layer_losses(
        self, mask_logits: torch.Tensor, class_logits: torch.Tensor, targets: list[Target]
    ) -> dict[str, torch.Tensor]:
        """Weighted losses of one decoder layer: mask_logits (B, Q, h, w), class_logits
        (B, Q, C + 1)."""
        indices = self.match(mask_logits, class_logits, targets)
        num_masks = max(sum(len(t.labels) for t in targets), 1)
        batch, queries, num_logits = class_logits.shape
        no_object = num_logits - 1
        target_classes = torch.full(
            (batch, queries), no_object, dtype=torch.int64, device=class_logits.device
        )
        for image, (rows, cols) in enumerate(indices):
            target_classes[image, rows.to(target_classes.device)] = (
                targets[image].labels[cols].to(target_classes.device)
            )
        class_weights = torch.ones(num_logits, device=class_logits.device)
        class_weights[no_object] = self.weights.no_object_weight
        loss_ce = F.cross_entropy(class_logits.transpose(1, 2), target_classes, class_weights)

        predicted, wanted, valids = [], [], []
        for image, (rows, cols) in enumerate(indices):
            if len(rows) == 0:
                continue
            target = targets[image]
            chosen = mask_logits[image, rows.to(mask_logits.device)]
            target_masks = target.masks[cols.to(target.masks.device)]
            upsampled = F.interpolate(
                chosen[:, None], size=target_masks.shape[-2:], mode="bilinear", align_corners=False
            )
            predicted.append(upsampled[:, 0].flatten(1))
            wanted.append(target_masks.flatten(1).to(upsampled.dtype))
            valid = target.valid if target.valid is not None else torch.ones_like(target.masks[0])
            valids.append(valid.flatten()[None].expand(len(rows), -1).to(upsampled.dtype))
        if predicted:
            logits, goal, valid = torch.cat(predicted), torch.cat(wanted), torch.cat(valids)
            if self.mask_loss == "focal":
                pixel = focal_loss(logits, goal, valid=valid)
            else:
                pixel = bce_loss(logits, goal, valid=valid)
            loss_mask = pixel.sum() / num_masks
            loss_dice = dice_loss(logits, goal, valid=valid).sum() / num_masks
        else:
            loss_mask = loss_dice = mask_logits.sum() * 0.0
        return {
            "loss_ce": self.weights.class_weight * loss_ce,
            "loss_mask": self.weights.mask_weight * loss_mask,
            "loss_dice": self.weights.dice_weight * loss_dice,
        }

    def __call__(
        self, mask_logits: torch.Tensor, class_logits: torch.Tensor, targets: list[Target]
    ) -> dict[str, torch.Tensor]:
        losses = self.layer_losses(mask_logits[-1], class_logits[-1], targets)
        if self.deep_supervision:
            for layer in range(mask_logits.shape[0] - 1):
                aux = self.layer_losses(mask_logits[layer], class_logits[layer], targets)
                losses.update({f"{name}_{layer}": value for name, value in aux.items()})
        return losses


def semantic_targets(
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    exclude_ignored: bool = False,
) -> Target:
    """labels: (H, W) int64 class indices or ignore_index -> one binary mask per class present.

    Ignored pixels belong to no mask. With exclude_ignored they also leave the mask losses
    (Target.valid); without (the reference), every mask is trained to be 0 there.
    """
    present = torch.unique(labels)
    present = present[(present != ignore_index) & (present < num_classes)]
    masks = (labels[None] == present[:, None, None]).float()
    valid = (labels != ignore_index).float() if exclude_ignored else None
    return Target(labels=present.long(), masks=masks, valid=valid)
