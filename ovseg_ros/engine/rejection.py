"""Open-set rejection: the probability that a mask shows one of the vocabulary's classes.

Method (chosen from measurements on the toy world, /work/notes/open-set-18.md): the mask's best
vocabulary class competes with a fixed bank of generic prompts (REFERENCE_PROMPTS: "object",
"thing", ...) in a softmax at CLIP's temperature, and the log-odds of the best class,

    evidence = s_best / T - logsumexp_b(s_b / T),   s = cosine similarity, T = 1 / 100,

is calibrated by a logistic: known = sigmoid(scale * evidence + offset). Only the best class
enters, so adding classes to the vocabulary leaves the score of a mask its best class explains
unchanged (unlike the max softmax probability or the best-vs-second margin, which fall as the
vocabulary grows). Bank prompts as close as BANK_OVERLAP to a vocabulary class are left out, so
a vocabulary that names "object" does not compete with itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ovseg_ros.engine.clip_model import ClipModel
from ovseg_ros.engine.prompts import VILD_TEMPLATES

REFERENCE_PROMPTS = (
    "object", "thing", "stuff", "something", "item", "other", "texture", "pattern",
    "surface", "material", "scene", "region", "part", "shape", "color", "image",
)  # fmt: skip
"""The generic "other" concepts a vocabulary class must beat."""
REFERENCE_TEMPLATES = VILD_TEMPLATES
"""Templates of the bank's text embeddings (as the default vocabulary's)."""
BANK_OVERLAP = 0.95
"""Bank prompts whose text embedding has at least this cosine similarity with a vocabulary
class's are left out for that vocabulary."""


@dataclass(frozen=True, eq=False)
class RejectionCalibration:
    """Constants of known_probabilities: known = sigmoid(scale * evidence + offset), evidence
    computed at temperature (see the module docstring). bank: (B, D) unit-norm text embeddings
    of REFERENCE_PROMPTS under the model (reference_bank), None until attached
    (rejection_calibration)."""

    scale: float
    offset: float
    temperature: float = 0.01
    bank: torch.Tensor | None = None


TINY_CLIP_CALIBRATION = RejectionCalibration(scale=0.178, offset=-0.794)
"""Fitted on training-world toy scenes (seeds 500000-500299, superpixel proposals, crop
classifier), class-balanced logistic over vocabularies of 2 to 200 classes."""
GENERIC_CALIBRATION = RejectionCalibration(scale=1.0, offset=0.0)
"""Default for other CLIP models (e.g. OpenAI ViT-B/16): known is the raw softmax probability
of the best class against the bank. Not fitted: no real CLIP weights exist on the machine this
was developed on."""
FITTED = {"ovseg-tiny-clip": TINY_CLIP_CALIBRATION}


def calibration_for(clip_name: str) -> RejectionCalibration:
    """The constants fitted for `clip_name` (open_clip model name), or GENERIC_CALIBRATION;
    without the bank (see rejection_calibration)."""
    return FITTED.get(clip_name, GENERIC_CALIBRATION)


def reference_bank(clip: ClipModel) -> torch.Tensor:
    """(B, D) float32 unit-norm text embeddings of REFERENCE_PROMPTS, each the normalised mean
    over REFERENCE_TEMPLATES (one text-tower run of B x 14 sentences: compute it once)."""
    sentences = [t.replace("{}", p) for p in REFERENCE_PROMPTS for t in REFERENCE_TEMPLATES]
    embeddings = clip.encode_texts(sentences).view(len(REFERENCE_PROMPTS), -1, clip.embed_dim)
    return torch.nn.functional.normalize(embeddings.mean(dim=1), dim=-1)


def rejection_calibration(clip: ClipModel) -> RejectionCalibration:
    """calibration_for(clip.name) with its bank computed on `clip` (reference_bank)."""
    return dataclasses.replace(calibration_for(clip.name), bank=reference_bank(clip))


def known_probabilities(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    calibration: RejectionCalibration,
) -> torch.Tensor:
    """image_embeddings (K, D), text_embeddings (C, D), both unit norm -> (K,) float32 in
    [0, 1]: the probability that each mask shows one of the C classes. calibration must carry
    its bank (rejection_calibration); when every bank prompt overlaps the vocabulary, nothing is
    rejected (1 for every mask)."""
    if calibration.bank is None:
        raise ValueError("the calibration has no reference bank; use rejection_calibration(clip)")
    device = image_embeddings.device
    images = image_embeddings.float()
    text = text_embeddings.float().to(device)
    bank = calibration.bank.float().to(device)
    bank = bank[(text @ bank.T).amax(dim=0) < BANK_OVERLAP]
    if len(bank) == 0 or len(images) == 0:
        return torch.ones(len(images), device=device)
    best = (images @ text.T).amax(dim=1)
    temperature = calibration.temperature
    evidence = best / temperature - (images @ bank.T / temperature).logsumexp(dim=1)
    return torch.sigmoid(calibration.scale * evidence + calibration.offset)
