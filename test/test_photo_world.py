"""The photo world: deterministic per seed, exact ground truth, nested variants, grey on grey,
and a clear error without scikit-image's photographs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from ovseg_ros.engine import photo_world, toy_world
from ovseg_ros.engine.datasets import PhotoWorldDataset
from ovseg_ros.engine.photo_world import VARIANTS, PhotosMissingError, generate_scene

SEEDS = range(toy_world.EVAL_SEEDS.start, toy_world.EVAL_SEEDS.start + 30)
GREY_OBJECTS = {p.name for p in photo_world.OBJECT_PHOTOS if p.grey}
GREY_BACKGROUNDS = {p.name for p in photo_world.BACKGROUND_PHOTOS if p.grey}


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(seed, 120, 160, "full") for seed in SEEDS]


def test_class_space_and_photo_lists():
    assert photo_world.photo_classes() == ["background", *toy_world.SHAPES, "blob"]
    objects = {p.file for p in photo_world.OBJECT_PHOTOS}
    backgrounds = {p.file for p in photo_world.BACKGROUND_PHOTOS}
    assert not objects & backgrounds
    for photos in (photo_world.OBJECT_PHOTOS, photo_world.BACKGROUND_PHOTOS):
        assert any(p.grey for p in photos) and not all(p.grey for p in photos)
        for photo in photos:  # every photo is readable, and grey ones are single-channel
            image = photo_world.read_photo(photo.file)
            assert image.dtype == np.uint8 and (image.ndim == 2) == photo.grey, photo.file
            assert photo.file in photo_world.__doc__


def test_same_seed_same_scene_and_sizes():
    first, again = generate_scene(1234, 120, 160), generate_scene(1234, 120, 160)
    for field in ("image", "labels", "instances"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    assert (first.classes, first.textures, first.background) == (
        again.classes,
        again.textures,
        again.background,
    )
    assert not np.array_equal(first.image, generate_scene(1235, 120, 160).image)
    assert first.image.shape == (120, 160, 3) and first.image.dtype == np.uint8
    assert first.labels.shape == (120, 160) and first.labels.dtype == np.uint8
    assert first.instances.shape == (120, 160) and first.instances.dtype == np.int32
    assert generate_scene(7).image.shape == (240, 320, 3)


def test_ground_truth_is_exact(scenes):
    classes = photo_world.photo_classes()
    for scene in scenes:
        k = len(scene.classes)
        assert 1 <= k <= toy_world.MAX_SHAPES
        assert len(scene.textures) == len(scene.areas) == k
        assert scene.labels.max() < len(classes)
        assert (scene.labels[scene.instances == 0] == 0).all()
        assert set(np.unique(scene.instances)) == set(range(k + 1))
        for index, (shape, area) in enumerate(zip(scene.classes, scene.areas, strict=True), 1):
            visible = scene.instances == index
            assert (scene.labels[visible] == classes.index(shape)).all()
            assert visible.sum() >= toy_world.MIN_VISIBLE_FRACTION * area, scene.seed


def test_blobs_and_every_shape_occur(scenes):
    seen = {shape for scene in scenes for shape in scene.classes}
    assert "blob" in seen and len(seen) >= 5


def test_variants_share_the_layout_but_not_the_pixels():
    for seed in SEEDS[:5]:
        texture, shading, full = (generate_scene(seed, 120, 160, v) for v in VARIANTS)
        for other in (shading, full):
            np.testing.assert_array_equal(other.labels, texture.labels)
            np.testing.assert_array_equal(other.instances, texture.instances)
            assert other.textures == texture.textures
        assert not np.array_equal(texture.image, shading.image)
        assert not np.array_equal(shading.image, full.image)
        assert texture.effects == {} and "shadow_darkness" in shading.effects
        assert full.effects["jpeg_quality"] >= 40 and 0 <= full.effects["blur_px"] <= 1.5
        # full is the shading scene degraded: close to it, never far off.
        difference = np.abs(full.image.astype(int) - shading.image.astype(int)).mean()
        assert 0 < difference < 20
    with pytest.raises(ValueError, match="unknown photo-world variant"):
        generate_scene(1, variant="night")


def test_train_and_eval_seed_ranges():
    assert photo_world.TRAIN_SEEDS is toy_world.TRAIN_SEEDS
    assert photo_world.EVAL_SEEDS is toy_world.EVAL_SEEDS
    assert PhotoWorldDataset().seeds[:2] == [
        toy_world.EVAL_SEEDS.start,
        toy_world.EVAL_SEEDS.start + 1,
    ]
    with pytest.raises(ValueError):
        generate_scene(-1)


def test_grey_objects_on_grey_backgrounds_occur():
    """The hard case: neither the object nor the background has any colour."""
    found = 0
    for seed in SEEDS:
        scene = generate_scene(seed, 120, 160, "texture")
        if scene.background not in GREY_BACKGROUNDS:
            continue
        background = scene.image[scene.instances == 0]
        assert (background == background[:, :1]).all()  # grey stays grey
        for k, texture in enumerate(scene.textures, start=1):
            if texture in GREY_OBJECTS:
                pixels = scene.image[scene.instances == k]
                assert (pixels == pixels[:, :1]).all()
                found += 1
    assert found >= 1


def test_photo_world_dataset_has_labels_and_instances():
    dataset = PhotoWorldDataset("shading", seeds=[5, 6], height=60, width=80)
    assert len(dataset) == 2 and dataset.class_names == photo_world.photo_classes()
    assert set(dataset.unseen_classes) == {*toy_world.UNSEEN_SHAPES, "blob"}
    sample = dataset[1]
    scene = generate_scene(6, 60, 80, "shading")
    np.testing.assert_array_equal(sample.image, scene.image)
    np.testing.assert_array_equal(sample.label, scene.labels)
    np.testing.assert_array_equal(sample.instances, scene.instances)
    assert sample.name == "seed-6"
    with pytest.raises(ValueError, match="variant"):
        PhotoWorldDataset("night")


def test_missing_scikit_image_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "skimage" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    photo_world.read_photo.cache_clear()
    photo_world._photo_region.cache_clear()
    try:
        with pytest.raises(PhotosMissingError, match="pip install scikit-image"):
            generate_scene(3)
        with pytest.raises(RuntimeError, match="toy:photo needs the photographs"):
            PhotoWorldDataset()
    finally:
        photo_world.read_photo.cache_clear()
        photo_world._photo_region.cache_clear()
