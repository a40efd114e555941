"""The toy world: deterministic per seed, consistent labels, full coverage of its classes."""

import numpy as np
import pytest

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.toy_world import generate_scene

SEEDS = range(60)


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(seed) for seed in SEEDS]


def test_same_seed_same_scene():
    first, again = generate_scene(1234), generate_scene(1234)
    for field in ("image", "shape_labels", "color_labels", "instances"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    assert (first.shapes, first.colors, first.background) == (
        again.shapes,
        again.colors,
        again.background,
    )
    other = generate_scene(1235)
    assert not np.array_equal(first.image, other.image)


def test_arrays_have_documented_shapes_and_dtypes(scenes):
    scene = scenes[0]
    assert scene.image.shape == (240, 320, 3) and scene.image.dtype == np.uint8
    assert scene.shape_labels.shape == (240, 320) and scene.shape_labels.dtype == np.uint8
    assert scene.color_labels.shape == (240, 320) and scene.color_labels.dtype == np.uint8
    assert scene.instances.shape == (240, 320) and scene.instances.dtype == np.int32
    small = generate_scene(7, height=60, width=90)
    assert small.image.shape == (60, 90, 3)


def test_labels_agree_with_instances(scenes):
    for scene in scenes:
        assert 1 <= len(scene.shapes) == len(scene.colors) <= toy_world.MAX_SHAPES
        background = scene.instances == 0
        assert (scene.shape_labels[background] == 0).all()
        assert (scene.color_labels[background] == 0).all()
        for k, (shape, color) in enumerate(zip(scene.shapes, scene.colors, strict=True), start=1):
            visible = scene.instances == k
            assert visible.sum() > 100, f"seed {scene.seed}: instance {k} barely visible"
            assert (scene.shape_labels[visible] == toy_world.shape_classes().index(shape)).all()
            assert (scene.color_labels[visible] == toy_world.color_classes().index(color)).all()
        assert set(np.unique(scene.instances)) == set(range(len(scene.shapes) + 1))


def test_shape_pixels_have_their_color(scenes):
    for scene in scenes:
        for k, color in enumerate(scene.colors, start=1):
            mean = scene.image[scene.instances == k].reshape(-1, 3).mean(axis=0)
            nominal = np.asarray(toy_world.COLOR_RGB[color])
            assert np.abs(mean - nominal).max() < 30, f"seed {scene.seed}, instance {k}"


def test_all_classes_and_backgrounds_appear(scenes):
    assert {s for scene in scenes for s in scene.shapes} == set(toy_world.SHAPES)
    assert {c for scene in scenes for c in scene.colors} == set(toy_world.COLORS)
    assert {scene.background for scene in scenes} == set(toy_world.BACKGROUNDS)
    assert {len(scene.shapes) for scene in scenes} == set(range(1, toy_world.MAX_SHAPES + 1))


def test_class_lists_and_split():
    assert toy_world.shape_classes() == ["background", *toy_world.SHAPES]
    assert toy_world.color_classes() == ["background", *toy_world.COLORS]
    assert {"circle", "square", "triangle", "star", "ring", "cross"} <= set(toy_world.SHAPES)
    assert {"red", "green", "blue", "yellow", "orange", "purple", "white"} <= set(toy_world.COLORS)
    assert set(toy_world.SEEN_SHAPES) | set(toy_world.UNSEEN_SHAPES) == set(toy_world.SHAPES)
    assert not set(toy_world.SEEN_SHAPES) & set(toy_world.UNSEEN_SHAPES)
    assert set(toy_world.SEEN_COLORS) | set(toy_world.UNSEEN_COLORS) == set(toy_world.COLORS)
    assert not set(toy_world.SEEN_COLORS) & set(toy_world.UNSEEN_COLORS)
    assert toy_world.TRAIN_SEEDS.stop <= toy_world.EVAL_SEEDS.start


def test_negative_seed_is_refused():
    with pytest.raises(ValueError, match="seed"):
        generate_scene(-1)
