"""The device-resident frame path: the frame goes to the CLIP device once per segment() call,
stage 1 can take it there, and stage 2 has no host round trip per mask (counted with the torch
profiler: the ops at which the host waits for the device do not grow with the number of masks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_model import TINY_CHECKPOINT, TINY_MODEL

from ovseg_ros.benchmark import count_host_waits
from ovseg_ros.engine import toy_world
from ovseg_ros.engine.proposals.base import ProposalGenerator, Proposals
from ovseg_ros.engine.segmenter import SegmenterConfig, build_segmenter
from ovseg_ros.engine.vocabulary import VocabularyEncoder


class FixedMasks(ProposalGenerator):
    """Returns the first `count` of some given masks, whatever the image."""

    def __init__(self, masks: torch.Tensor, count: int) -> None:
        self.masks, self.count = masks, count

    def __call__(self, image, vocabulary=None) -> Proposals:
        return Proposals(masks=self.masks[: self.count])


class ArraysOnly(ProposalGenerator):
    """Hands a generator the image as a numpy array, as generators that take no tensors get it."""

    def __init__(self, inner: ProposalGenerator) -> None:
        self.inner = inner

    def __call__(self, image, vocabulary=None) -> Proposals:
        assert isinstance(image, np.ndarray)
        return self.inner(image, vocabulary)


@pytest.fixture(scope="module")
def segmenter():
    return build_segmenter(
        TINY_MODEL, checkpoint=TINY_CHECKPOINT, device="cpu", proposal_generator="hierarchy"
    )


@pytest.fixture(scope="module")
def scene():
    return toy_world.generate_scene(toy_world.EVAL_SEEDS.start + 1)


@pytest.mark.parametrize("classifier", ["crop", "dense"])
def test_host_waits_of_stage_two_do_not_grow_with_the_number_of_masks(segmenter, scene, classifier):
    vocabulary = VocabularyEncoder(segmenter.clip).encode(toy_world.shape_classes(), "single")
    masks = segmenter.proposals(scene.image).masks
    assert len(masks) >= 40
    generator, config = segmenter.proposals, segmenter.config
    try:
        segmenter.config = SegmenterConfig(classifier=classifier)
        counts = []
        for count in (8, 40):
            segmenter.proposals = FixedMasks(masks, count)
            counts.append(count_host_waits(lambda: segmenter.segment(scene.image, vocabulary)))
    finally:
        segmenter.proposals, segmenter.config = generator, config
    assert counts[0] == counts[1], counts
    assert sum(counts[0].values()) <= 12, counts[0]


def test_a_generator_that_takes_tensors_gets_the_uploaded_frame_and_gives_the_same_result(
    segmenter, scene
):
    vocabulary = VocabularyEncoder(segmenter.clip).encode(toy_world.shape_classes(), "single")
    assert segmenter.proposals.takes_tensors
    generator = segmenter.proposals
    received = []

    def recording(image, vocabulary=None):
        received.append(type(image))
        return generator(image, vocabulary)

    recording.takes_tensors = True
    try:
        segmenter.proposals = recording
        on_device = segmenter.segment(scene.image, vocabulary)
    finally:
        segmenter.proposals = generator
    assert received == [torch.Tensor]
    try:
        segmenter.proposals = ArraysOnly(generator)
        from_array = segmenter.segment(scene.image, vocabulary)
    finally:
        segmenter.proposals = generator
    assert np.array_equal(on_device.labels, from_array.labels)
    assert np.array_equal(on_device.scores, from_array.scores)
    proposals = segmenter.propose(scene.image, vocabulary)
    assert torch.equal(proposals.masks, generator(scene.image).masks)
