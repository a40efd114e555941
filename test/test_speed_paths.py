"""The faster paths compute what the reference path computes: shared duplicate crops and cached
text embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_model import TINY_CHECKPOINT, TINY_MODEL

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.classify import CropClassifier, unique_masks
from ovseg_ros.engine.clip_model import load_clip
from ovseg_ros.engine.proposals import build_proposal_generator
from ovseg_ros.engine.segmenter import TwoStageSegmenter
from ovseg_ros.engine.vocabulary import VocabularyEncoder


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip(TINY_MODEL, checkpoint=TINY_CHECKPOINT, device="cpu")


def test_unique_masks_merges_only_identical_masks():
    masks = torch.zeros(5, 40, 50, dtype=torch.bool)
    masks[0, 5:20, 5:20] = True
    masks[1, 5:20, 5:20] = True  # same as 0
    masks[2, 5:20, 5:20] = True
    masks[2, 19, 19] = False  # one pixel off 0: distinct
    masks[3, 30:35, 0:50] = True
    masks[4] = masks[3]  # same as 3
    first, inverse = unique_masks(masks)
    assert first.tolist() == [0, 2, 3]
    assert inverse.tolist() == [0, 0, 1, 2, 2]
    assert torch.equal(masks[first][inverse], masks)


def test_duplicate_proposals_get_the_probabilities_of_their_twin(tiny_clip):
    scene = toy_world.generate_scene(toy_world.EVAL_SEEDS.start)
    masks = torch.from_numpy(
        np.stack([scene.instances == 1, scene.instances == 0, scene.instances == 1])
    ).float()
    text = VocabularyEncoder(tiny_clip).encode(toy_world.shape_classes(), "single")
    classifier = CropClassifier(tiny_clip)
    crops = classifier.make_crops(scene.image, masks, 0.5)
    assert crops.crops.shape[0] == 2 and crops.inverse.tolist() == [0, 1, 0]
    probabilities, kept = classifier(scene.image, masks, text.text_embeddings)
    assert kept.tolist() == [0, 1, 2]
    torch.testing.assert_close(probabilities[0], probabilities[2])
    single, _ = classifier(scene.image, masks[:1], text.text_embeddings)
    torch.testing.assert_close(probabilities[0], single[0])


def test_steady_state_runs_no_text_encoder(tiny_clip):
    calls = []
    original = tiny_clip.model.encode_text

    def counting_encode_text(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    tiny_clip.model.encode_text = counting_encode_text
    try:
        encoder = VocabularyEncoder(tiny_clip)
        segmenter = TwoStageSegmenter(tiny_clip, build_proposal_generator("superpixel"))
        vocabulary = encoder.encode(toy_world.shape_classes(), "single")
        after_first_encoding = len(calls)
        assert after_first_encoding > 0
        for seed in range(3):
            segmenter.segment(
                toy_world.generate_scene(toy_world.EVAL_SEEDS.start + seed).image, vocabulary
            )
        again = encoder.encode(toy_world.shape_classes(), "single")
        assert len(calls) == after_first_encoding  # frames and a repeated vocabulary: cached
        assert again.version == vocabulary.version + 1
        encoder.encode([*toy_world.shape_classes(), "hexagon"], "single")
        assert len(calls) == after_first_encoding + 1  # only the new name is encoded
    finally:
        tiny_clip.model.encode_text = original
