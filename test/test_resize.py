"""ProcessingSize: its text forms, the sizes it gives (detectron2's rounding for a short side),
the interpolation it resizes with, and a segmenter that enlarges its input yet answers at the
input's resolution with the labels where they belong."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from test_segmenter import clip, encoder  # noqa: F401 (fixtures)

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.options import DEFAULT_PROCESSING_SIZE
from ovseg_ros.engine.proposals import ProposalGenerator, Proposals
from ovseg_ros.engine.resize import ProcessingSize
from ovseg_ros.engine.segmentation import UNLABELED
from ovseg_ros.engine.segmenter import SegmenterConfig, TwoStageSegmenter

FORMS = "N or long:N (long side at most N), short:N or short:N:M"


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("640", ProcessingSize("long", 640), "640"),
        ("long:640", ProcessingSize("long", 640), "640"),
        (" Long:320 ", ProcessingSize("long", 320), "320"),
        (320, ProcessingSize("long", 320), "320"),
        ("short:512", ProcessingSize("short", 512), "short:512"),
        ("short:512:2048", ProcessingSize("short", 512, 2048), "short:512:2048"),
        ("0", ProcessingSize("long", 0), "0"),
        ("native", ProcessingSize("long", 0), "0"),
    ],
)
def test_parse_forms(text, expected, canonical):
    size = ProcessingSize.parse(text)
    assert size == expected
    assert str(size) == canonical and ProcessingSize.parse(str(size)) == size


def test_the_default_is_a_640_long_side():
    assert ProcessingSize.parse(DEFAULT_PROCESSING_SIZE) == ProcessingSize("long", 640)
    assert SegmenterConfig().processing_size == ProcessingSize("long", 640)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "processing size '' is not one of: " + FORMS),
        ("wide", "processing size 'wide' is not one of: " + FORMS),
        ("1.5", "processing size '1.5' is not one of: " + FORMS),
        ("short", "processing size 'short' is not one of: " + FORMS),
        ("short:x", "processing size 'short:x' is not one of: " + FORMS),
        ("long:640:2048", "processing size 'long:640:2048' is not one of: " + FORMS),
        ("-1", "processing sizes must be >= 0, got -1"),
        ("short:0", "a short-side processing size must be >= 1 (use '0' for native)"),
        ("short:512:100", "the long-side cap 100 is below the short side 512"),
    ],
)
def test_bad_forms_are_refused_with_one_clear_message(text, message):
    with pytest.raises(ValueError) as refusal:
        ProcessingSize.parse(text)
    assert str(refusal.value).startswith(message)
    assert "\n" not in str(refusal.value)


def test_segmenter_config_parses_text_at_any_time():
    config = SegmenterConfig(processing_size="short:512:2048")
    assert config.processing_size == ProcessingSize("short", 512, 2048)
    config.processing_size = "native"
    assert config.processing_size == ProcessingSize("long", 0)
    with pytest.raises(ValueError, match="processing size 'big' is not one of"):
        config.processing_size = "big"
    with pytest.raises(ValueError, match="processing sizes must be >= 0"):
        SegmenterConfig(processing_size="-1")


@pytest.mark.parametrize(
    ("height", "width", "text", "expected"),
    [
        # long side at most N, downscale only
        (480, 640, "640", (480, 640)),
        (720, 1280, "640", (360, 640)),
        (1080, 1920, "long:640", (360, 640)),
        (1920, 1080, "640", (640, 360)),
        (3000, 2, "640", (640, 1)),
        (60, 80, "640", (60, 80)),
        (4, 4, "1", (1, 1)),
        # native
        (1080, 1920, "0", (1080, 1920)),
        (1080, 1920, "native", (1080, 1920)),
        # short side exactly N, up or down (detectron2: int(side * scale + 0.5))
        (375, 500, "short:512", (512, 683)),
        (500, 375, "short:512", (683, 512)),
        (1080, 1920, "short:512", (512, 910)),
        (60, 80, "short:120", (120, 160)),
        (4, 5, "short:2", (2, 3)),  # 2.5 rounds up, not to even
        (512, 512, "short:512", (512, 512)),
        # ... then the long side capped at M
        (375, 500, "short:512:2048", (512, 683)),
        (100, 5000, "short:512:2048", (41, 2048)),
        (5000, 100, "short:512:2048", (2048, 41)),
        (100, 5000, "short:512", (512, 25600)),
    ],
)
def test_shape(height, width, text, expected):
    assert ProcessingSize.parse(text).shape(height, width) == expected


def test_apply_shrinks_with_area_and_enlarges_bilinearly():
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    assert ProcessingSize.parse("640").apply(image) is image
    assert ProcessingSize.parse("0").apply(image) is image
    assert ProcessingSize.parse("short:60").apply(image) is image
    small = ProcessingSize.parse("40").apply(image)
    np.testing.assert_array_equal(small, cv2.resize(image, (40, 30), interpolation=cv2.INTER_AREA))
    large = ProcessingSize.parse("short:120").apply(image)
    expected = cv2.resize(image, (160, 120), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(large, expected)
    # A short-side resize that shrinks (here by its cap) uses INTER_AREA too.
    capped = ProcessingSize.parse("short:50:60").apply(image)
    np.testing.assert_array_equal(capped, cv2.resize(image, (60, 45), interpolation=cv2.INTER_AREA))


class RedAndBlue(ProposalGenerator):
    """Two masks, the image's reddish pixels and the rest, scored as class 0 and class 1 (with
    ensemble weight 1 and both classes trained, these scores alone decide the labels)."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, image, vocabulary=None) -> Proposals:
        self.sizes.append(image.shape[:2])
        red = torch.from_numpy(image[..., 0].astype(np.int16) > image[..., 2].astype(np.int16))
        masks = torch.stack([red, ~red]).float()
        scores = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
        return Proposals(masks, None, scores, torch.tensor([True, True]))


def _halves(height: int, width: int, boundary: int) -> np.ndarray:
    """Red left of column `boundary`, blue from it on."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :boundary] = (200, 40, 40)
    image[:, boundary:] = (40, 40, 200)
    return image


@pytest.mark.parametrize("text", ["short:120", "short:100", "40"])
def test_a_resized_frame_is_labelled_at_its_own_resolution_and_in_place(clip, encoder, text):  # noqa: F811
    vocabulary = encoder.encode(["red", "blue"], "single")
    generator = RedAndBlue()
    config = SegmenterConfig(processing_size="0", ensemble_weight=1.0)
    segmenter = TwoStageSegmenter(clip, generator, config)
    image = _halves(60, 80, 29)
    native = segmenter.segment(image, vocabulary)
    segmenter.config.processing_size = text
    resized = segmenter.segment(image, vocabulary)
    assert generator.sizes == [(60, 80), ProcessingSize.parse(text).shape(60, 80)]
    assert resized.labels.shape == resized.scores.shape == (60, 80)
    assert np.isfinite(resized.scores).all() and (resized.labels != UNLABELED).all()
    assert (native.labels[:, :29] == 0).all() and (native.labels[:, 29:] == 1).all()
    # Per row, the first blue column sits within a pixel of the native run's.
    first_blue = (resized.labels == 1).argmax(axis=1)
    assert (np.abs(first_blue - 29) <= 1).all(), first_blue
    assert ((resized.labels == 1) == (np.arange(80) >= first_blue[:, None])).all()


class GroundTruth(ProposalGenerator):
    """A toy scene's objects and background as proposals, resized (nearest) to the image given,
    each scored as its shape class alone."""

    def __init__(self, scene: toy_world.ToyScene) -> None:
        self.instances = scene.instances
        names = toy_world.shape_classes()
        self.classes = [0] + [names.index(shape) for shape in scene.shapes]  # by instance id
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, image, vocabulary=None) -> Proposals:
        height, width = image.shape[:2]
        self.sizes.append((height, width))
        instances = cv2.resize(self.instances, (width, height), interpolation=cv2.INTER_NEAREST)
        ids = np.unique(instances)
        masks = torch.from_numpy(np.stack([instances == i for i in ids])).float()
        classes = [self.classes[i] for i in ids]
        scores = torch.full((len(ids), vocabulary.num_classes), 0.01)
        scores[torch.arange(len(ids)), classes] = 0.99
        return Proposals(masks, None, scores, torch.ones(vocabulary.num_classes, dtype=torch.bool))


def test_an_enlarged_toy_scene_keeps_its_labels_in_place(clip, encoder):  # noqa: F811
    """The first held-out toy scene at short:360 (x1.5): the labels are the native run's but for
    pixels next to a label boundary, which may take their neighbour's."""
    scene = toy_world.generate_scene(toy_world.EVAL_SEEDS.start)
    vocabulary = encoder.encode(toy_world.shape_classes(), "single")
    generator = GroundTruth(scene)
    config = SegmenterConfig(processing_size="native", ensemble_weight=1.0, min_proposal_area=1)
    segmenter = TwoStageSegmenter(clip, generator, config)
    native = segmenter.segment(scene.image, vocabulary)
    np.testing.assert_array_equal(native.labels, scene.shape_labels)
    segmenter.config.processing_size = "short:360"
    enlarged = segmenter.segment(scene.image, vocabulary)
    assert generator.sizes == [(240, 320), (360, 480)]
    assert enlarged.labels.shape == enlarged.scores.shape == (240, 320)
    wrong = np.argwhere(enlarged.labels != native.labels)
    assert len(wrong) < 0.02 * native.labels.size
    padded = np.pad(native.labels, 1, mode="edge")
    for y, x in wrong:  # each within a pixel of the class it took
        assert enlarged.labels[y, x] in padded[y : y + 3, x : x + 3], (y, x)
