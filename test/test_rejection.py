"""Open-set rejection scores (engine/rejection.py) on hand-made embeddings and the tiny CLIP."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from tiny_model import TINY_CHECKPOINT, TINY_MODEL

from ovseg_ros.engine.clip_model import load_clip
from ovseg_ros.engine.rejection import (
    GENERIC_CALIBRATION,
    REFERENCE_PROMPTS,
    TINY_CLIP_CALIBRATION,
    RejectionCalibration,
    calibration_for,
    known_probabilities,
    reference_bank,
    rejection_calibration,
)

DIM = 256


def basis(*indices: int) -> torch.Tensor:
    """Unit vectors e_i of R^DIM, one row each."""
    return torch.eye(DIM)[list(indices)]


def calibration(bank: torch.Tensor) -> RejectionCalibration:
    return dataclasses.replace(TINY_CLIP_CALIBRATION, bank=bank)


def test_range_shape_and_dtype():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(50, DIM), dim=-1)
    text = F.normalize(torch.randn(7, DIM), dim=-1)
    bank = F.normalize(torch.randn(16, DIM), dim=-1)
    known = known_probabilities(images, text, calibration(bank))
    assert known.shape == (50,) and known.dtype == torch.float32
    assert bool(((known >= 0) & (known <= 1)).all())
    assert known_probabilities(images[:0], text, calibration(bank)).shape == (0,)


def test_hidden_class_mask_scores_lower():
    # Vocabulary e0, e1; bank e10, e11. A mask of class e0 (a little of the bank in it too)
    # against a mask of a hidden class e2, which the vocabulary explains no better than the bank.
    text, bank = basis(0, 1), basis(10, 11)
    known_mask = F.normalize(basis(0)[0] + 0.3 * basis(10)[0], dim=0)
    hidden_mask = F.normalize(basis(2)[0] + 0.3 * basis(10)[0] + 0.1 * basis(1)[0], dim=0)
    known = known_probabilities(torch.stack([known_mask, hidden_mask]), text, calibration(bank))
    assert known[0] > 0.9 and known[1] < 0.1


def test_vocabulary_size_leaves_the_best_class_score_unchanged():
    # Adding 198 classes that match the masks less than their best class changes nothing.
    torch.manual_seed(1)
    text = basis(0, 1)
    distractors = F.normalize(torch.randn(198, DIM) * torch.arange(DIM).ge(20), dim=-1)
    bank = basis(10, 11, 12)
    images = F.normalize(basis(0, 1) + 0.5 * basis(10, 12) + 0.05 * torch.randn(2, DIM), dim=-1)
    small = known_probabilities(images, text, calibration(bank))
    large = known_probabilities(images, torch.cat([text, distractors]), calibration(bank))
    assert torch.allclose(small, large)
    assert (large > 0.5).all()


def test_a_vocabulary_naming_a_bank_prompt_does_not_compete_with_itself():
    bank = basis(10, 11)
    images = basis(10)  # a mask of exactly the concept of bank prompt 0
    named = known_probabilities(images, basis(0, 10), calibration(bank))
    unnamed = known_probabilities(images, basis(0, 1), calibration(bank))
    assert named[0] > 0.9 > 0.1 > unnamed[0]
    # Every bank prompt named: nothing to compete with, nothing is rejected.
    assert known_probabilities(images, basis(10, 11), calibration(bank)).tolist() == [1.0]


def test_calibration_needs_its_bank():
    with pytest.raises(ValueError, match="rejection_calibration"):
        known_probabilities(basis(0), basis(0, 1), TINY_CLIP_CALIBRATION)


def test_calibration_for_names():
    assert calibration_for("ovseg-tiny-clip") is TINY_CLIP_CALIBRATION
    assert calibration_for("ViT-B-16") is GENERIC_CALIBRATION
    assert calibration_for("ViT-B-16").bank is None


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip(TINY_MODEL, checkpoint=TINY_CHECKPOINT, device="cpu")


def test_reference_bank_on_the_tiny_clip(tiny_clip):
    bank = reference_bank(tiny_clip)
    assert bank.shape == (len(REFERENCE_PROMPTS), tiny_clip.embed_dim)
    assert torch.allclose(bank.norm(dim=-1), torch.ones(len(REFERENCE_PROMPTS)), atol=1e-5)
    attached = rejection_calibration(tiny_clip)
    assert attached.scale == TINY_CLIP_CALIBRATION.scale
    assert torch.equal(attached.bank, bank)


def test_tiny_clip_text_of_a_vocabulary_class_is_known(tiny_clip):
    # Text embeddings stand in for masks: "circle" is in the vocabulary, "star" is not.
    vocabulary = tiny_clip.encode_texts(["a photo of a background.", "a photo of a circle."])
    masks = tiny_clip.encode_texts(["a photo of a circle.", "a photo of a star."])
    known = known_probabilities(masks, vocabulary, rejection_calibration(tiny_clip))
    assert known[0] > known[1]
