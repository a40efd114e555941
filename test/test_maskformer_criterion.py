"""MaskFormer training loss: Hungarian matching, focal / dice values, deep supervision."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ovseg_ros.engine.maskformer.criterion import (
    LossWeights,
    SetCriterion,
    Target,
    batch_dice_cost,
    batch_focal_cost,
    dice_loss,
    focal_loss,
    linear_sum_assignment,
    semantic_targets,
)


def brute_force(cost: np.ndarray) -> float:
    rows, cols = cost.shape
    if rows <= cols:
        return min(
            sum(cost[i, p[i]] for i in range(rows))
            for p in itertools.permutations(range(cols), rows)
        )
    return brute_force(cost.T)


def test_assignment_is_optimal_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows, cols = (int(n) for n in rng.integers(1, 6, 2))
        cost = rng.normal(size=(rows, cols))
        r, c = linear_sum_assignment(cost)
        assert len(r) == min(rows, cols)
        assert len(set(r.tolist())) == len(r) and len(set(c.tolist())) == len(c)
        assert cost[r, c].sum() == pytest.approx(brute_force(cost))


def test_assignment_known_answer():
    cost = np.array([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    rows, cols = linear_sum_assignment(cost)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]  # 1 + 2 + 2 = 5
    rows, cols = linear_sum_assignment(np.array([[5.0], [1.0], [3.0]]))
    assert rows.tolist() == [1] and cols.tolist() == [0]


def test_assignment_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        linear_sum_assignment(np.array([[np.nan, 1.0]]))


def test_focal_and_dice_hand_values():
    logits = torch.zeros(1, 2)
    targets = torch.tensor([[1.0, 0.0]])
    # p = 0.5: positive pixel 0.25 * 0.5^2 * ln 2, negative pixel 0.75 * 0.5^2 * ln 2; mean.
    expected_focal = (0.25 + 0.75) * 0.25 * math.log(2) / 2
    assert focal_loss(logits, targets).item() == pytest.approx(expected_focal)
    # dice: 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1 / 3
    assert dice_loss(logits, targets).item() == pytest.approx(1 / 3)


def test_batch_costs_equal_pairwise_losses():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    targets = (torch.rand(3, 30) > 0.5).float()
    focal = batch_focal_cost(logits, targets)
    dice = batch_dice_cost(logits, targets)
    for q in range(4):
        for t in range(3):
            pair = (logits[q : q + 1], targets[t : t + 1])
            assert focal[q, t].item() == pytest.approx(focal_loss(*pair).item(), rel=1e-5)
            assert dice[q, t].item() == pytest.approx(dice_loss(*pair).item(), rel=1e-5)


def test_valid_pixels_restrict_losses_and_costs():
    torch.manual_seed(1)
    logits = torch.randn(3, 12)
    targets = (torch.rand(2, 12) > 0.5).float()
    valid = torch.tensor([1.0] * 8 + [0.0] * 4)
    inside = (logits[:, :8], targets[:, :8])
    focal = batch_focal_cost(logits, targets, valid=valid)
    dice = batch_dice_cost(logits, targets, valid)
    torch.testing.assert_close(focal, batch_focal_cost(*inside))
    torch.testing.assert_close(dice, batch_dice_cost(*inside))
    rows = valid.expand(2, -1)
    torch.testing.assert_close(
        focal_loss(logits[:2], targets, valid=rows), focal_loss(logits[:2, :8], targets[:, :8])
    )
    torch.testing.assert_close(
        dice_loss(logits[:2], targets, valid=rows), dice_loss(logits[:2, :8], targets[:, :8])
    )


def test_semantic_targets_skip_ignored_pixels():
    labels = torch.tensor([[0, 0, 2], [255, 2, 2]])
    target = semantic_targets(labels, num_classes=3)
    assert target.labels.tolist() == [0, 2]
    assert target.masks.tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 1, 1]]]
    assert target.valid is None
    excluded = semantic_targets(labels, num_classes=3, exclude_ignored=True)
    assert excluded.valid.tolist() == [[1, 1, 1], [0, 1, 1]]


def perfect_outputs():
    """Two targets (class 1 left half, class 0 right half); query 2 predicts the first, query 0
    the second, confidently; query 1 predicts non-object."""
    masks = torch.zeros(2, 4, 4)
    masks[0, :, :2] = 1
    masks[1, :, 2:] = 1
    target = Target(labels=torch.tensor([1, 0]), masks=masks)
    mask_logits = torch.full((1, 3, 4, 4), -20.0)
    mask_logits[0, 2] = masks[0] * 40 - 20
    mask_logits[0, 0] = masks[1] * 40 - 20
    class_logits = torch.full((1, 3, 3), -20.0)
    class_logits[0, 2, 1] = 20
    class_logits[0, 0, 0] = 20
    class_logits[0, 1, 2] = 20
    return mask_logits, class_logits, target


def test_matching_finds_the_right_queries():
    mask_logits, class_logits, target = perfect_outputs()
    [(rows, cols)] = SetCriterion().match(mask_logits, class_logits, [target])
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 1, 2: 0}


def test_perfect_prediction_has_near_zero_loss_and_errors_raise_it():
    mask_logits, class_logits, target = perfect_outputs()
    criterion = SetCriterion(deep_supervision=False)
    losses = criterion(mask_logits[None], class_logits[None], [target])
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    assert losses["loss_ce"].item() < 1e-6
    assert losses["loss_mask"].item() < 1e-6
    assert losses["loss_dice"].item() < 0.2  # the +1 smoothing: 1 - 17 / 17 ~ 0 per mask
    wrong = class_logits.clone()
    wrong[0, 2] = torch.tensor([20.0, -20.0, -20.0])  # left half called class 0
    worse = criterion(mask_logits[None], wrong[None], [target])
    assert worse["loss_ce"].item() > 1.0


def test_no_object_weight_scales_unmatched_queries():
    mask_logits, class_logits, target = perfect_outputs()
    class_logits[0, 1] = 0.0  # uniform over 3 classes for the unmatched query: -ln(1/3)
    weights = LossWeights(no_object_weight=0.1)
    loss = SetCriterion(weights, deep_supervision=False).layer_losses(
        mask_logits, class_logits, [target]
    )["loss_ce"]
    # weighted mean: (0 + 0 + 0.1 * ln 3) / (1 + 1 + 0.1)
    assert loss.item() == pytest.approx(0.1 * math.log(3) / 2.1, rel=1e-4)


def test_deep_supervision_adds_a_set_per_earlier_layer():
    mask_logits, class_logits, target = perfect_outputs()
    stacked_masks = torch.stack([mask_logits, mask_logits, mask_logits])
    stacked_classes = torch.stack([class_logits, class_logits, class_logits])
    losses = SetCriterion(mask_loss="bce")(stacked_masks, stacked_classes, [target])
    assert sorted(losses) == sorted(
        f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0", "_1")
    )


def test_image_without_targets_trains_non_object_only():
    mask_logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    class_logits = torch.zeros(1, 2, 3, requires_grad=True)
    empty = Target(labels=torch.zeros(0, dtype=torch.int64), masks=torch.zeros(0, 4, 4))
    losses = SetCriterion(deep_supervision=False).layer_losses(mask_logits, class_logits, [empty])
    assert losses["loss_ce"].item() == pytest.approx(math.log(3))
    assert losses["loss_mask"].item() == 0.0
    sum(losses.values()).backward()
    assert class_logits.grad is not None
