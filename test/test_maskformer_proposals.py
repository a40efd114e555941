"""The "maskformer" proposal generator: masks and class scores of the network, trained-class
flags, the kept queries, and errors; with a small random network and a random tiny CLIP."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ovseg_ros.engine.clip_model import load_clip
from ovseg_ros.engine.maskformer.backbone import ResNetConfig
from ovseg_ros.engine.maskformer.checkpoint import save_maskformer
from ovseg_ros.engine.maskformer.model import MaskFormer, MaskFormerConfig
from ovseg_ros.engine.proposals import build_proposal_generator
from ovseg_ros.engine.proposals.maskformer import MaskFormerProposalGenerator
from ovseg_ros.engine.vocabulary import VocabularyEncoder

CONFIG = MaskFormerConfig(
    backbone=ResNetConfig(
        blocks_per_stage=(1, 1, 1, 1),
        block="basic",
        stem_channels=8,
        res2_channels=8,
        res5_multi_grid=(1,),
        norm="bn",
    ),
    conv_dim=16,
    mask_dim=16,
    hidden_dim=16,
    num_queries=6,
    num_layers=2,
    heads=2,
    feedforward_dim=32,
    dropout=0.0,
    embedding_dim=64,
    embed_hidden_dim=32,
)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip("ovseg-tiny-clip", random_weights=True, device="cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("net") / "net.safetensors"
    save_maskformer(path, MaskFormer(CONFIG).eval(), ["background", "circle"], (48, 64))
    return path


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)


def test_registered_by_name(checkpoint):
    generator = build_proposal_generator("maskformer", checkpoint=str(checkpoint), device="cpu")
    assert isinstance(generator, MaskFormerProposalGenerator)


def test_masks_and_scores(clip, checkpoint):
    generator = MaskFormerProposalGenerator(checkpoint, device="cpu")
    vocabulary = VocabularyEncoder(clip).encode(["circle", "star|asterisk", "Background"])
    proposals = generator(image(), vocabulary)
    assert proposals.masks.shape == (6, 60, 90)
    assert 0 <= float(proposals.masks.min()) and float(proposals.masks.max()) <= 1
    assert proposals.class_scores.shape == (6, 3)
    # softmax over 3 classes + non-object, non-object dropped: rows sum below 1
    assert bool((proposals.class_scores.sum(1) < 1).all())
    assert proposals.trained_classes.tolist() == [True, False, True]
    without = generator(image())
    assert without.class_scores is None and without.trained_classes is None
    torch.testing.assert_close(without.masks, proposals.masks)


def test_scores_are_the_reference_softmax(clip, checkpoint):
    generator = MaskFormerProposalGenerator(checkpoint, device="cpu")
    vocabulary = VocabularyEncoder(clip).encode(["circle", "star"])
    proposals = generator(image(), vocabulary)
    model = generator.model
    small = cv2.resize(image(), (64, 48), interpolation=cv2.INTER_AREA)
    raw = model.propose(small)
    with torch.no_grad():
        logits = model.class_logits(raw.embeddings, vocabulary.text_embeddings)
    torch.testing.assert_close(proposals.class_scores, logits.softmax(-1)[:, :-1])


def test_max_proposals_keeps_the_least_non_object(clip, checkpoint):
    vocabulary = VocabularyEncoder(clip).encode(["circle", "star"])
    full = MaskFormerProposalGenerator(checkpoint, device="cpu")(image(), vocabulary)
    kept = MaskFormerProposalGenerator(checkpoint, max_proposals=2, device="cpu")(
        image(), vocabulary
    )
    non_object = 1 - full.class_scores.sum(1)
    best = non_object.argsort()[:2].sort().values
    torch.testing.assert_close(kept.masks, full.masks[best])
    torch.testing.assert_close(kept.class_scores, full.class_scores[best])


def test_trained_classes_setting_overrides_checkpoint(clip, checkpoint):
    generator = MaskFormerProposalGenerator(checkpoint, device="cpu", trained_classes=["star"])
    vocabulary = VocabularyEncoder(clip).encode(["circle", "star"])
    assert generator(image(), vocabulary).trained_classes.tolist() == [False, True]


def test_vocabulary_of_another_text_space_is_refused(checkpoint):
    class Wide:
        version = 1
        class_names = ["a"]
        synonyms = (("a",),)
        text_embeddings = torch.ones(1, 512)

    generator = MaskFormerProposalGenerator(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="512 dimensions"):
        generator(image(), Wide())


def test_bad_max_proposals(checkpoint):
    with pytest.raises(ValueError, match="max_proposals"):
        MaskFormerProposalGenerator(checkpoint, max_proposals=0, device="cpu")
