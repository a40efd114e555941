"""Metrics against confusion matrices worked out by hand."""

import math

import numpy as np
import pytest

from ovseg_ros.engine.metrics import (
    ConfusionMatrix,
    class_iou,
    compute_metrics,
    hiou,
    miou,
    pixel_accuracy,
)

# Ground truth and prediction of a 2 x 3 image, 3 classes, one ignored pixel (255).
GT = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 1, 0]])
# Counted pairs (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,1); the ignored pixel's pred 0 is not.
EXPECTED_COUNTS = np.array(
    [
        [1, 1, 0, 0],
        [0, 2, 0, 0],
        [0, 1, 0, 0],
    ]
)


def test_confusion_counts_skip_the_ignore_label():
    confusion = ConfusionMatrix(3)
    confusion.update(PRED, GT)
    np.testing.assert_array_equal(confusion.counts, EXPECTED_COUNTS)
    assert confusion.num_pixels == 5


def test_iou_accuracy_by_hand():
    confusion = ConfusionMatrix(3)
    confusion.update(PRED, GT)
    # class 0: TP 1, gt area 2, pred area 1 -> 1 / 2
    # class 1: TP 2, gt area 2, pred area 4 -> 2 / 4
    # class 2: TP 0, gt area 1, pred area 0 -> 0 / 1
    np.testing.assert_allclose(class_iou(confusion), [0.5, 0.5, 0.0])
    assert miou(class_iou(confusion)) == pytest.approx(1 / 3)
    assert pixel_accuracy(confusion) == pytest.approx(3 / 5)


def test_updates_accumulate():
    confusion = ConfusionMatrix(3)
    confusion.update(PRED, GT)
    confusion.update(PRED, GT)
    np.testing.assert_array_equal(confusion.counts, 2 * EXPECTED_COUNTS)
    np.testing.assert_allclose(class_iou(confusion), [0.5, 0.5, 0.0])


def test_class_absent_from_gt_and_prediction_is_excluded():
    confusion = ConfusionMatrix(4)
    confusion.update(PRED, GT)
    iou = class_iou(confusion)
    np.testing.assert_allclose(iou[:3], [0.5, 0.5, 0.0])
    assert math.isnan(iou[3])
    assert miou(iou) == pytest.approx(1 / 3)


def test_class_absent_from_gt_but_predicted_counts_as_zero():
    confusion = ConfusionMatrix(4)
    confusion.update(np.array([[0, 3], [1, 1]]), np.array([[0, 0], [1, 1]]))
    # class 0: TP 1, gt 2, pred 1 -> 1/2; class 1: 2/2; class 2: NaN; class 3: TP 0, pred 1 -> 0
    iou = class_iou(confusion)
    np.testing.assert_allclose(iou[[0, 1, 3]], [0.5, 1.0, 0.0])
    assert math.isnan(iou[2])
    assert miou(iou) == pytest.approx(0.5)
    assert pixel_accuracy(confusion) == pytest.approx(3 / 4)


def test_empty_prediction():
    confusion = ConfusionMatrix(3)
    confusion.update(np.full(GT.shape, 65535), GT)
    np.testing.assert_array_equal(confusion.counts, [[0, 0, 0, 2], [0, 0, 0, 2], [0, 0, 0, 1]])
    np.testing.assert_allclose(class_iou(confusion), [0.0, 0.0, 0.0])
    assert miou(class_iou(confusion)) == 0.0
    assert pixel_accuracy(confusion) == 0.0


def test_unlabeled_pixels_are_misses_not_false_positives():
    confusion = ConfusionMatrix(2)
    confusion.update(np.array([[0, -1, 65535, 1]]), np.array([[0, 0, 1, 1]]))
    # class 0: TP 1, gt 2, pred 1 -> 1/2; class 1: TP 1, gt 2, pred 1 -> 1/2
    np.testing.assert_array_equal(confusion.counts, [[1, 0, 1], [0, 1, 1]])
    np.testing.assert_allclose(class_iou(confusion), [0.5, 0.5])
    assert pixel_accuracy(confusion) == pytest.approx(0.5)


def test_all_ignored_gives_nan():
    confusion = ConfusionMatrix(3)
    confusion.update(PRED, np.full(GT.shape, 255))
    assert confusion.num_pixels == 0
    assert math.isnan(miou(class_iou(confusion)))
    assert math.isnan(pixel_accuracy(confusion))


def test_seen_unseen_and_hiou():
    names = ["background", "cat", "dog", "bird"]
    gt = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])
    pred = np.array([[0, 0, 1, 2], [2, 2, 3, 0]])
    confusion = ConfusionMatrix(4)
    confusion.update(pred, gt)
    # background: TP 2, gt 2, pred 3 -> 2/3; cat: TP 1, gt 2, pred 1 -> 1/2
    # dog: TP 2, gt 2, pred 3 -> 2/3; bird: TP 1, gt 2, pred 1 -> 1/2
    result = compute_metrics(confusion, names, unseen_classes=["dog", "bird"])
    np.testing.assert_allclose(result.iou, [2 / 3, 1 / 2, 2 / 3, 1 / 2])
    assert result.miou == pytest.approx(7 / 12)
    assert result.seen_miou == pytest.approx(7 / 12)
    assert result.unseen_miou == pytest.approx(7 / 12)
    assert result.hiou == pytest.approx(7 / 12)
    assert result.pixel_accuracy == pytest.approx(6 / 8)

    result = compute_metrics(confusion, names, unseen_classes=["cat"])
    seen, unseen = (2 / 3 + 2 / 3 + 1 / 2) / 3, 1 / 2
    assert result.seen_miou == pytest.approx(seen)
    assert result.unseen_miou == pytest.approx(unseen)
    assert result.hiou == pytest.approx(2 * seen * unseen / (seen + unseen))
    as_dict = result.to_dict()
    assert as_dict["iou"]["cat"] == pytest.approx(0.5)
    assert as_dict["hiou"] == pytest.approx(result.hiou)


def test_hiou_edge_cases():
    assert hiou(0.0, 0.0) == 0.0
    assert hiou(0.8, 0.0) == 0.0
    assert hiou(0.6, 0.3) == pytest.approx(0.4)
    assert math.isnan(hiou(0.5, math.nan))


def test_without_unseen_classes_split_figures_are_nan():
    confusion = ConfusionMatrix(4)
    confusion.update(PRED, GT)
    result = compute_metrics(confusion, ["a", "b", "c", "d"])
    assert result.miou == pytest.approx(1 / 3)
    assert math.isnan(result.hiou)
    as_dict = result.to_dict()
    assert as_dict["hiou"] is None
    assert as_dict["iou"]["d"] is None


def test_bad_input():
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        confusion.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="ground-truth value 7"):
        confusion.update(np.zeros((1, 2)), np.array([[0, 7]]))
    with pytest.raises(ValueError, match="unseen classes"):
        compute_metrics(confusion, ["a", "b", "c"], unseen_classes=["z"])
