"""Open-set rejection in the segmenter: strength 0 leaves every label as it was, a strength
sets pixels unlikely to show a vocabulary class to UNLABELED and counts them, the per-pixel
known map, the grey "unknown" in the overlay; and the node's `rejection` parameter over DDS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from std_msgs.msg import Header
from test_segmenter_node import Harness, _labels_of, _scene_image

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.clip_model import default_checkpoint
from ovseg_ros.engine.render import render_overlay
from ovseg_ros.engine.segmentation import UNLABELED
from ovseg_ros.engine.segmenter import SegmenterConfig, aggregate_known, build_segmenter
from ovseg_ros.engine.vocabulary import VocabularyEncoder
from ovseg_ros.ros.conversions import segmentation_to_msg

SHAPES = toy_world.shape_classes()
VISIBLE = SHAPES[:4]  # background, circle, square, triangle: star, ring and cross are hidden


@pytest.fixture(scope="module")
def segmenter():
    return build_segmenter("ovseg-tiny-clip", checkpoint=default_checkpoint(), device="cpu")


@pytest.fixture(scope="module")
def vocabulary(segmenter):
    return VocabularyEncoder(segmenter.clip).encode(VISIBLE, "single")


def scene_with_hidden_shapes() -> toy_world.ToyScene:
    """The first held-out scene holding a star, ring or cross (a class outside VISIBLE)."""
    for seed in range(toy_world.EVAL_SEEDS.start, toy_world.EVAL_SEEDS.start + 50):
        scene = toy_world.generate_scene(seed)
        if np.isin(scene.shape_labels, [SHAPES.index(n) for n in SHAPES[4:]]).any():
            return scene
    raise AssertionError("no held-out scene shows a hidden shape")


def test_strength_0_keeps_every_label(segmenter, vocabulary):
    scene = scene_with_hidden_shapes()
    segmenter.config = SegmenterConfig()
    plain = segmenter.segment(scene.image, vocabulary)
    segmenter.config = SegmenterConfig(rejection=0.0, known_map=True)
    mapped = segmenter.segment(scene.image, vocabulary)
    np.testing.assert_array_equal(plain.labels, mapped.labels)
    np.testing.assert_array_equal(plain.scores, mapped.scores)
    assert plain.known is None and plain.unknown is None and plain.rejected_pixels == 0
    assert mapped.known.shape == scene.image.shape[:2] and mapped.known.dtype == np.float32
    assert 0.0 <= mapped.known.min() and mapped.known.max() <= 1.0
    assert mapped.unknown is None and mapped.rejected_pixels == 0


def test_a_strength_rejects_pixels_and_counts_them(segmenter, vocabulary):
    scene = scene_with_hidden_shapes()
    segmenter.config = SegmenterConfig(known_map=True)
    base = segmenter.segment(scene.image, vocabulary)
    strength = float(np.median(base.known))
    segmenter.config = SegmenterConfig(rejection=strength)
    rejected = segmenter.segment(scene.image, vocabulary)
    expected = (base.labels != UNLABELED) & (base.known < strength)
    assert expected.any()
    np.testing.assert_array_equal(rejected.unknown, expected)
    assert rejected.rejected_pixels == int(expected.sum())
    assert (rejected.labels[expected] == UNLABELED).all()
    np.testing.assert_array_equal(rejected.labels[~expected], base.labels[~expected])
    msg = segmentation_to_msg(rejected, Header(frame_id="cam"))
    assert msg.rejected_pixels == rejected.rejected_pixels
    overlay = render_overlay(scene.image, rejected)
    grey = overlay[expected]
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()


def test_aggregate_known_is_the_coverage_weighted_mean():
    masks = torch.zeros((2, 2, 3), dtype=torch.bool)
    masks[0, :, :2] = True
    masks[1, :, 1:] = True
    known = aggregate_known(torch.tensor([0.2, 0.8]), masks, torch.tensor([1.0, 3.0]))
    np.testing.assert_allclose(known[0], [0.2, (0.2 + 3 * 0.8) / 4, 0.8], rtol=1e-6)
    uncovered = aggregate_known(torch.tensor([0.5]), torch.zeros((1, 2, 2), dtype=torch.bool))
    np.testing.assert_array_equal(uncovered, np.ones((2, 2), np.float32))
    resized = aggregate_known(torch.tensor([0.2, 0.8]), masks, output_size=(4, 6))
    assert resized.shape == (4, 6) and resized[0, 0] == pytest.approx(0.2)


def test_rejection_is_applied_between_frames_and_validated(ros_context):
    harness = Harness(ros_context, vocabulary=VISIBLE)
    try:
        harness.wait_connected()
        _, message = _scene_image(toy_world.EVAL_SEEDS.start, 1)
        harness.image_pub.publish(message)
        assert harness.spin_until(lambda: len(harness.results) == 1)
        assert harness.results[0].rejected_pixels == 0
        (refused,) = harness.set_parameters(rejection=1.5)
        assert not refused.successful and "out of range" in refused.reason
        (accepted,) = harness.set_parameters(rejection=1.0)  # everything covered is unknown
        assert accepted.successful
        harness.image_pub.publish(_scene_image(toy_world.EVAL_SEEDS.start, 2)[1])
        assert harness.spin_until(lambda: len(harness.results) == 2)
        result = harness.results[1]
        labels = _labels_of(result.labels)
        assert result.rejected_pixels > 0
        assert result.rejected_pixels == int((labels == UNLABELED).sum())
    finally:
        harness.close()
