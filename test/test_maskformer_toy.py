"""The committed toy proposal network (models/ovseg-toy-maskformer.safetensors): what it was
trained on, and the paper's central claim in miniature on held-out toy scenes: classifying its
masks with CLIP (ensemble) beats its own classification on unseen classes."""

from __future__ import annotations

import json

import pytest

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.clip_model import (
    TINY_MODEL,
    default_checkpoint,
    load_clip,
    read_state_dict,
    text_tower_digest,
)
from ovseg_ros.engine.datasets import ToyWorldDataset
from ovseg_ros.engine.maskformer.checkpoint import load_maskformer, read_metadata
from ovseg_ros.engine.maskformer.zero_shot import compare_classifiers
from ovseg_ros.engine.proposals.maskformer import (
    MaskFormerProposalGenerator,
    default_maskformer_checkpoint,
)
from ovseg_ros.engine.vocabulary import VocabularyEncoder


def test_fixture_is_small_and_trained_on_seen_shapes_only():
    path = default_maskformer_checkpoint()
    assert path.stat().st_size <= 10 * 1024 * 1024
    loaded = load_maskformer(path)
    assert loaded.trained_classes == [
        c for c in toy_world.shape_classes() if c not in toy_world.UNSEEN_SHAPES
    ]
    assert not set(loaded.trained_classes) & set(toy_world.UNSEEN_SHAPES)


def test_fixture_was_trained_in_the_text_space_of_the_committed_tiny_clip():
    """Its class head lives in the tiny CLIP's text space: retrain it (tools/train_maskformer.py)
    whenever the text side of models/ovseg-tiny-clip.safetensors changes. (Its image tower may
    change: tools/tune_tiny_clip_dense.py trains only that.)"""
    recorded = read_metadata(default_maskformer_checkpoint())["clip_source"]
    assert recorded == text_tower_digest(read_state_dict(default_checkpoint()))


@pytest.mark.slow
def test_ensemble_beats_the_network_alone_on_unseen_shapes():
    """100 scenes: the unseen shapes' IoUs are small (about 8 to 14 %), and on the first 40 alone
    the committed tiny CLIP's gain was within scene-sampling noise (+0.02 points, +2.7 on 100)."""
    clip = load_clip(TINY_MODEL, checkpoint=default_checkpoint(), device="cpu")
    generator = MaskFormerProposalGenerator(device="cpu", clip=clip)
    templates = json.loads(read_metadata(default_maskformer_checkpoint())["templates"])
    start = toy_world.EVAL_SEEDS.start
    dataset = ToyWorldDataset("shape", seeds=range(start, start + 100))
    vocabulary = VocabularyEncoder(clip).encode(dataset.class_names, templates)
    result = compare_classifiers(clip, generator, vocabulary, dataset, ensemble_weights=(0.8,))
    network, ensemble = result.network_only, result.ensemble[0.8]
    assert ensemble.unseen_miou > network.unseen_miou + 0.02
    assert ensemble.hiou > network.hiou
