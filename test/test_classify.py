"""Stage-2 arithmetic against values worked out by hand: crop box, fill, normalisation, resize,
temperature softmax, ensemble, batching."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_model import TINY_MODEL

from ovseg_ros.engine.classify import (
    CropClassifier,
    binarize_masks,
    clip_probabilities,
    ensemble_probabilities,
    usable_masks,
)
from ovseg_ros.engine.clip_model import load_clip
from ovseg_ros.engine.crops import mask_boxes, masked_crops

MEAN = (0.5, 0.25, 0.125)
STD = (0.5, 0.25, 0.5)


def _fake_clip(image_size: tuple[int, int]) -> SimpleNamespace:
    """Just the attributes make_crops reads."""
    return SimpleNamespace(device=torch.device("cpu"), mean=MEAN, std=STD, image_size=image_size)


def test_softmax_with_temperature_100_on_two_classes():
    # cos(image, class 0) = 1, cos(image, class 1) = 0.99: logits 100 and 99, so
    # p0 = e^100 / (e^100 + e^99) = 1 / (1 + e^-1).
    image = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [0.99, math.sqrt(1 - 0.99**2)]])
    probs = clip_probabilities(image, text)
    expected = 1 / (1 + math.exp(-1))
    assert probs[0, 0].item() == pytest.approx(expected, abs=1e-6)
    assert probs[0, 1].item() == pytest.approx(1 - expected, abs=1e-6)


def test_equal_similarities_give_uniform_probabilities():
    image = torch.tensor([[0.6, 0.8]])
    text = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.6, 0.8], [0.6, 0.8]])
    assert clip_probabilities(image, text).tolist() == [[0.25, 0.25, 0.25, 0.25]]


def test_binarize_is_strictly_greater_than_the_threshold():
    masks = torch.tensor([[[0.5, 0.51], [0.0, 1.0]]])
    assert binarize_masks(masks, 0.5).tolist() == [[[False, True], [False, True]]]


def test_masks_below_the_minimum_area_are_dropped_before_cropping():
    masks = torch.zeros((4, 10, 10))
    masks[1, 0, :5] = 1.0  # 5 pixels
    masks[2, :4, :4] = 1.0  # 16 pixels
    masks[3] = 1.0  # 100 pixels; mask 0 is empty
    binary, kept = usable_masks(masks, 0.5)
    assert kept.tolist() == [1, 2, 3]
    binary, kept = usable_masks(masks, 0.5, min_area=16)
    assert kept.tolist() == [2, 3]
    assert torch.equal(binary, masks[[2, 3]] > 0.5)
    crops = CropClassifier(_fake_clip((8, 8))).make_crops(
        np.zeros((10, 10, 3), np.uint8), masks, 0.5, min_area=16
    )
    assert crops.kept.tolist() == [2, 3] and crops.crops.shape[0] == 2
    whole = torch.ones((1, 2, 3))  # an image smaller than min_area: its whole-image mask counts
    assert usable_masks(whole, 0.5, min_area=16)[1].tolist() == [0]


def test_crop_is_tight_box_mean_filled_and_normalised():
    # 4 x 5 image, channel values chosen so (v / 255 - mean) / std is easy to state.
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    image[..., 0] = 255  # R: (1 - 0.5) / 0.5 = 1
    image[..., 1] = 0  # G: (0 - 0.25) / 0.25 = -1
    image[..., 2] = 51  # B: (0.2 - 0.125) / 0.5 = 0.15
    # An L-shaped mask: rows 1..2, columns 1..3, the top right pixel of that box left out.
    mask = torch.zeros((4, 5))
    mask[1, 1:3] = 0.9
    mask[2, 1:4] = 0.9
    masks = torch.stack([mask, torch.zeros((4, 5))])  # the second one is empty
    # Model input = box size (2 x 3): bicubic resizing to the same size is the identity.
    classifier = CropClassifier(_fake_clip((2, 3)))
    result = classifier.make_crops(image, masks, mask_threshold=0.5)
    assert result.kept.tolist() == [0]
    inside = [[True, True, False], [True, True, True]]
    expected = np.zeros((1, 3, 2, 3), dtype=np.float32)
    for channel, value in enumerate((1.0, -1.0, 0.15)):
        expected[0, channel] = np.where(inside, value, 0.0)  # outside: the mean, i.e. 0
    np.testing.assert_allclose(result.crops.numpy(), expected, atol=1e-6)


def test_constant_crop_stays_constant_after_bicubic_resize():
    image = np.full((6, 8, 3), 102, dtype=np.uint8)  # 0.4 in [0, 1]
    masks = torch.zeros((1, 6, 8))
    masks[0, 1:5, 2:7] = 1.0
    crops = CropClassifier(_fake_clip((16, 16))).make_crops(image, masks, 0.5).crops
    assert crops.shape == (1, 3, 16, 16)
    for channel in range(3):
        value = (0.4 - MEAN[channel]) / STD[channel]
        np.testing.assert_allclose(crops[0, channel].numpy(), value, atol=1e-5)


def test_all_empty_masks_give_no_crops():
    image = np.zeros((3, 3, 3), dtype=np.uint8)
    result = CropClassifier(_fake_clip((4, 4))).make_crops(image, torch.zeros((2, 3, 3)), 0.5)
    assert result.crops.shape == (0, 3, 4, 4)
    assert result.kept.tolist() == []


def _reference_crops(image: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]):
    """The per-mask algorithm masked_crops batches: tight box, mask, F.interpolate."""
    crops = []
    for mask in masks:
        ys, xs = mask.nonzero(as_tuple=True)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        region = image[:, y0:y1, x0:x1] * mask[y0:y1, x0:x1]
        crops.append(F.interpolate(region[None], size=size, mode="bicubic", align_corners=False))
    return torch.cat(crops)


def _random_masks(height: int, width: int, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """(N, height, width) bool: random pixels in each (x0, y0, x1, y1) box, its corners set, so
    the box is the mask's tight box."""
    generator = torch.Generator().manual_seed(1)
    masks = torch.zeros((len(boxes), height, width), dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
        mask[y0:y1, x0:x1] = torch.rand((y1 - y0, x1 - x0), generator=generator) < 0.6
        mask[[y0, y0, y1 - 1, y1 - 1], [x0, x1 - 1, x0, x1 - 1]] = True
    return masks


# A 30 x 44 image: a 1 x 1 box, 1 pixel wide and 1 pixel tall boxes, the full image, small and
# large boxes, boxes on the right and bottom edges.
CROP_BOXES = [
    (5, 7, 6, 8),
    (3, 2, 4, 25),
    (10, 12, 40, 13),
    (0, 0, 44, 30),
    (20, 4, 26, 9),
    (2, 1, 41, 29),
    (30, 10, 44, 30),
    (0, 22, 9, 30),
]


@pytest.mark.parametrize("size", [(16, 24), (7, 5), (40, 9)])
def test_masked_crops_match_per_mask_bicubic_resize(size):
    image = torch.rand((3, 30, 44), generator=torch.Generator().manual_seed(0)) * 4 - 2
    masks = _random_masks(30, 44, CROP_BOXES)
    crops = masked_crops(image, masks, size)
    assert crops.shape == (len(CROP_BOXES), 3, *size) and crops.dtype == torch.float32
    torch.testing.assert_close(crops, _reference_crops(image, masks, size), rtol=0, atol=1e-4)


def test_masked_crops_in_chunks_equal_one_chunk():
    image = torch.rand((3, 30, 44), generator=torch.Generator().manual_seed(2)) * 4 - 2
    masks = _random_masks(30, 44, CROP_BOXES[1:])  # 7 masks: chunks of 3, 3 and 1
    whole = masked_crops(image, masks, (12, 10), chunk=len(masks))
    torch.testing.assert_close(masked_crops(image, masks, (12, 10), chunk=3), whole)
    torch.testing.assert_close(masked_crops(image, masks, (12, 10), chunk=1), whole)
    torch.testing.assert_close(whole, _reference_crops(image, masks, (12, 10)), rtol=0, atol=1e-4)


def test_masked_crops_reject_an_empty_mask_and_take_no_masks():
    image = torch.zeros((3, 6, 8))
    masks = _random_masks(6, 8, [(1, 1, 4, 5), (0, 0, 8, 6)])
    masks[1] = False
    with pytest.raises(ValueError, match="empty mask"):
        masked_crops(image, masks, (4, 4))
    with pytest.raises(ValueError, match="chunk"):
        masked_crops(image, masks[:1], (4, 4), chunk=0)
    assert masked_crops(image, masks[:0], (4, 5)).shape == (0, 3, 4, 5)


def test_mask_boxes_are_tight_and_zero_for_empty_masks():
    masks = _random_masks(30, 44, CROP_BOXES)
    masks = torch.cat([masks, torch.zeros((1, 30, 44), dtype=torch.bool)])
    assert mask_boxes(masks).tolist() == [list(box) for box in CROP_BOXES] + [[0, 0, 0, 0]]


def test_embed_runs_bounded_batches():
    sizes = []

    def encode_images(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(batch.shape[0])
        return torch.nn.functional.normalize(batch.flatten(1)[:, :4], dim=-1)

    clip = SimpleNamespace(device=torch.device("cpu"), embed_dim=4, encode_images=encode_images)
    crops = torch.arange(5 * 3 * 2 * 2, dtype=torch.float32).reshape(5, 3, 2, 2) + 1
    embeddings = CropClassifier(clip).embed(crops, batch_size=2)
    assert sizes == [2, 2, 1]
    expected = torch.nn.functional.normalize(crops.flatten(1)[:, :4], dim=-1)
    torch.testing.assert_close(embeddings, expected)


def test_ensemble_formula_for_trained_and_novel_classes():
    clip = torch.tensor([[0.25, 0.75]])
    net = torch.tensor([[0.64, 0.36]])
    trained = torch.tensor([True, False])
    # lambda = 0.5: trained sqrt(0.64 * 0.25) = 0.4; novel sqrt(0.36 * 0.75) = 0.6 * sqrt(0.75).
    out = ensemble_probabilities(clip, net, 0.5, trained)
    assert out[0, 0].item() == pytest.approx(0.4, abs=1e-6)
    assert out[0, 1].item() == pytest.approx(0.6 * math.sqrt(0.75), abs=1e-6)
    # lambda = 1: the network decides trained classes, CLIP the others.
    out = ensemble_probabilities(clip, net, 1.0, trained)
    assert out[0].tolist() == pytest.approx([0.64, 0.75])
    # lambda = 0.75, no trained classes: p_net^0.25 * p_clip^0.75 for both.
    out = ensemble_probabilities(clip, net, 0.75, None)
    expected = [0.64**0.25 * 0.25**0.75, 0.36**0.25 * 0.75**0.75]
    assert out[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_classifier_call_gives_a_distribution_per_non_empty_mask():
    torch.manual_seed(0)
    clip = load_clip(TINY_MODEL, random_weights=True, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    masks = torch.zeros((3, 16, 20))
    masks[0, :8] = 1.0
    masks[2, 4:, 5:] = 0.7
    text = torch.nn.functional.normalize(torch.randn(4, clip.embed_dim), dim=-1)
    probabilities, kept = CropClassifier(clip)(image, masks, text, mask_threshold=0.5)
    assert kept.tolist() == [0, 2]
    assert probabilities.shape == (2, 4)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2))
