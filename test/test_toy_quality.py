"""End-to-end quality on held-out toy-world scenes with the committed tiny CLIP: default
proposals, crop and dense classifiers, every pixel counted (background is a class of the
vocabulary)."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_model import TINY_CHECKPOINT, TINY_MODEL

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.datasets import ToyWorldDataset
from ovseg_ros.engine.evaluate import Evaluation, best_iou_per_instance, evaluate
from ovseg_ros.engine.segmenter import SegmenterConfig, build_segmenter
from ovseg_ros.engine.vocabulary import VocabularyEncoder

HELD_OUT = range(toy_world.EVAL_SEEDS.start, toy_world.EVAL_SEEDS.start + 50)
MIOU_BAR = 0.85
DENSE_GAP = 0.05
"""The dense classifier's mIoU may trail the crop classifier's by at most this much."""


@pytest.fixture(scope="module")
def segmenter():
    return build_segmenter(TINY_MODEL, checkpoint=TINY_CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def evaluations(segmenter) -> dict[tuple[str, str], Evaluation]:
    """(label space, classifier) -> the evaluation on the HELD_OUT scenes, computed on demand."""
    cache: dict[tuple[str, str], Evaluation] = {}

    def get(label_space: str, classifier: str) -> Evaluation:
        if (label_space, classifier) not in cache:
            segmenter.config = SegmenterConfig(classifier=classifier)
            dataset = ToyWorldDataset(label_space, seeds=HELD_OUT)
            vocabulary = VocabularyEncoder(segmenter.clip).encode(dataset.class_names, "single")
            cache[label_space, classifier] = evaluate(
                segmenter, vocabulary, dataset, len(dataset.class_names), dataset.ignore_index
            )
            segmenter.config = SegmenterConfig()
        return cache[label_space, classifier]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("label_space", ["shape", "color"])
def test_miou_on_fifty_held_out_scenes(evaluations, label_space):
    metrics = evaluations(label_space, "crop").metrics
    assert metrics.num_pixels == 50 * 240 * 320
    assert metrics.miou >= MIOU_BAR, metrics.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("label_space", ["shape", "color"])
def test_dense_classifier_miou_close_to_the_crop_classifier(evaluations, label_space):
    """Within DENSE_GAP on both label spaces. Shapes are the hard case: they differ only in
    outline, which the dense path sees at the scale the shape has in the frame (dense 92.2 % against
    crop 94.4 % when the committed tiny CLIP was made; 67.6 % dense with the class token masked in
    the last block only)."""
    crop = evaluations(label_space, "crop").metrics
    dense = evaluations(label_space, "dense").metrics
    assert dense.num_pixels == crop.num_pixels
    assert dense.miou >= crop.miou - DENSE_GAP, (dense.miou, crop.miou)


@pytest.mark.slow
def test_proposal_recall_on_fifty_held_out_scenes(segmenter):
    recalls = []
    for seed in HELD_OUT:
        scene = toy_world.generate_scene(seed)
        recalls += best_iou_per_instance(segmenter.proposals(scene.image).masks, scene.instances)
    assert np.mean(recalls) >= 0.9


@pytest.mark.slow
def test_one_image_under_two_vocabularies_gives_both_labelings(segmenter):
    # An orange square, a white circle, an orange triangle and a blue ring.
    scene = toy_world.generate_scene(toy_world.EVAL_SEEDS.start + 3)
    assert scene.colors == ["orange", "white", "orange", "blue"]
    encoder = VocabularyEncoder(segmenter.clip)
    shapes = encoder.encode(toy_world.shape_classes(), "single")
    colors = encoder.encode(toy_world.color_classes(), "single")
    by_shape = segmenter.segment(scene.image, shapes)
    by_color = segmenter.segment(scene.image, colors)
    assert (by_shape.vocabulary_version, by_color.vocabulary_version) == (1, 2)
    assert (by_shape.labels == scene.shape_labels).mean() >= 0.95
    assert (by_color.labels == scene.color_labels).mean() >= 0.95
    # Each visible shape's pixels mostly carry its own shape name and its own color name.
    for k, (shape, color) in enumerate(zip(scene.shapes, scene.colors, strict=True), start=1):
        pixels = scene.instances == k
        shape_votes = np.bincount(by_shape.labels[pixels], minlength=7)
        color_votes = np.bincount(by_color.labels[pixels], minlength=8)
        assert by_shape.class_names[int(shape_votes.argmax())] == shape
        assert by_color.class_names[int(color_votes.argmax())] == color
