"""Stage-1 proposals: the generator registry, superpixels, the merge tree, the default generator."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from proposal_scenes import checkerboard_scene

from ovseg_ros.engine.evaluate import best_iou_per_instance
from ovseg_ros.engine.proposals import (
    DEFAULT_PROPOSAL_GENERATOR,
    ProposalGenerator,
    Proposals,
    build_proposal_generator,
    proposal_generator_names,
    register_proposal_generator,
)
from ovseg_ros.engine.proposals import base as proposals_base
from ovseg_ros.engine.proposals.grouping import (
    MergeTree,
    adjacent_pairs,
    build_merge_tree,
    node_leaves,
    persistence,
)
from ovseg_ros.engine.proposals.superpixels import watershed_superpixels


def _best_iou(masks: torch.Tensor, target: np.ndarray) -> float:
    binary = masks.numpy() > 0.5
    intersection = (binary & target).sum(axis=(1, 2))
    union = (binary | target).sum(axis=(1, 2))
    return float((intersection / union).max())


def test_registry_builds_by_name_and_rejects_unknown_names_and_settings():
    assert DEFAULT_PROPOSAL_GENERATOR in proposal_generator_names()
    assert build_proposal_generator("superpixel", max_proposals=7).max_proposals == 7
    with pytest.raises(ValueError, match="unknown proposal generator 'no-such'; known: "):
        build_proposal_generator("no-such")
    with pytest.raises(ValueError, match="bad settings for proposal generator 'superpixel'"):
        build_proposal_generator("superpixel", colour=3)
    with pytest.raises(ValueError, match="must be >= 1"):
        build_proposal_generator("superpixel", max_proposals=0)
    with pytest.raises(ValueError, match="max_regions >= min_regions >= 2"):
        build_proposal_generator("superpixel", max_regions=2, min_regions=3)


def test_a_new_generator_plugs_in_by_registering():
    @register_proposal_generator("test-whole-image")
    class WholeImage(ProposalGenerator):
        def __init__(self, max_proposals: int = 1) -> None:
            self.max_proposals = max_proposals

        def __call__(self, image, vocabulary=None) -> Proposals:
            return Proposals(masks=torch.ones((1, *image.shape[:2])))

    try:
        generator = build_proposal_generator("test-whole-image")
        assert len(generator(np.zeros((4, 5, 3), np.uint8))) == 1
        with pytest.raises(ValueError, match="already registered"):
            register_proposal_generator("test-whole-image")(WholeImage)
    finally:
        proposals_base._FACTORIES.pop("test-whole-image")


def test_superpixels_are_connected_and_numbered_densely():
    image, _, _ = checkerboard_scene()
    labels = watershed_superpixels(image, 100)
    count = int(labels.max()) + 1
    assert labels.shape == (120, 160)
    assert sorted(np.unique(labels)) == list(range(count))
    assert 60 <= count <= 140
    for label in range(count):
        parts, _ = cv2.connectedComponents((labels == label).astype(np.uint8), connectivity=4)
        assert parts == 2, f"superpixel {label} is not 4-connected"


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 3), (2, 2, 3), (3, 3, 3)])
def test_tiny_images_become_one_superpixel_or_a_few(shape):
    labels = watershed_superpixels(np.full(shape, 90, np.uint8), 300)
    assert labels.shape == shape[:2]
    assert labels.min() == 0


def test_adjacent_pairs_of_a_hand_made_label_map():
    labels = np.array([[0, 0, 1], [2, 2, 1], [2, 3, 3]])
    assert adjacent_pairs(labels).tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]
    assert adjacent_pairs(np.zeros((2, 2), int)).shape == (0, 2)


def test_merge_tree_merges_the_cheapest_ward_cost_first():
    # Three 1-pixel regions in a row with descriptors 0, 1, 10: merging 0 and 1 costs
    # 1 * 1 / 2 * 1 = 0.5, merging 1 and 2 costs 40.5, so (0, 1) -> node 3 first; node 3
    # (2 px, descriptor 0.5) then merges with region 2.
    tree = build_merge_tree(
        np.array([1.0, 1.0, 1.0]), np.array([[0.0], [1.0], [10.0]]), np.array([[0, 1], [1, 2]])
    )
    assert tree.merges == [(0, 1), (2, 3)]
    assert tree.sizes == [1.0, 1.0, 1.0, 2.0, 3.0]


def test_persistence_of_a_hand_made_tree():
    # Leaves 0..3; merges at heights 1, 10, 100: (0, 1) -> 4, (2, 3) -> 5, (4, 5) -> 6.
    tree = MergeTree(
        num_leaves=4,
        merges=[(0, 1), (2, 3), (4, 5)],
        sizes=[1, 1, 1, 1, 2, 2, 4],
        heights=[1.0, 10.0, 100.0],
    )
    assert node_leaves(tree)[5] == [2, 3] and node_leaves(tree)[6] == [0, 1, 2, 3]
    # Window: from 3 regions left (height 1) to the merge leaving 1 (height 100), in log units.
    weights = persistence(tree, max_regions=3, min_regions=2)
    ln10 = math.log(10)
    assert weights == pytest.approx({2: ln10, 3: ln10, 4: 2 * ln10, 5: ln10})
    # Every pixel's chain adds up to the window, log(100) - log(1).
    assert weights[4] == pytest.approx(weights[2] + weights[5])
    # From the leaves on: leaves live from MIN_HEIGHT (1e-3); the root is never proposed.
    weights = persistence(tree, max_regions=4, min_regions=2)
    assert weights[0] == pytest.approx(math.log(1.0) - math.log(1e-3))
    assert 6 not in weights


def test_persistence_without_merges_or_with_equal_heights():
    single = MergeTree(num_leaves=1, merges=[], sizes=[5.0], heights=[])
    assert persistence(single, 32, 2) == {0: 1.0}
    flat = MergeTree(num_leaves=3, merges=[(0, 1), (3, 2)], sizes=[1, 1, 1, 2, 3], heights=[0, 0])
    assert persistence(flat, 32, 2) == {4: 1.0}


def test_default_generator_finds_the_objects_and_the_textured_background():
    image, disc, rectangle = checkerboard_scene()
    proposals = build_proposal_generator("superpixel")(image)
    masks = proposals.masks
    assert masks.dtype == torch.bool and masks.shape[1:] == (120, 160)
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    assert proposals.weights is not None and (proposals.weights > 0).all()
    assert proposals.class_scores is None
    assert _best_iou(masks, disc) > 0.9
    assert _best_iou(masks, rectangle) > 0.9
    assert _best_iou(masks, ~(disc | rectangle)) > 0.9
    # Several granularities overlap: some pixel is covered by more than one mask.
    assert masks.sum(dim=0).max() > 1


def test_default_generator_respects_the_cap_and_is_deterministic():
    image, _, _ = checkerboard_scene()
    generator = build_proposal_generator("superpixel", max_proposals=3)
    first, second = generator(image), generator(image)
    assert len(first) == 3
    torch.testing.assert_close(first.masks, second.masks)
    torch.testing.assert_close(first.weights, second.weights)
    # The most stable masks are kept first: weights do not increase along the list.
    assert first.weights.tolist() == sorted(first.weights.tolist(), reverse=True)


def test_default_generator_on_a_one_pixel_image():
    proposals = build_proposal_generator("superpixel")(np.zeros((1, 1, 3), np.uint8))
    assert proposals.masks.tolist() == [[[1.0]]]


def test_proposal_recall_is_the_best_iou_per_instance():
    instances = np.array([[0, 1, 1, 0], [0, 1, 2, 2]])
    masks = torch.zeros((2, 2, 4))
    masks[0, :, 1:3] = 1.0  # instance 1 (3 px) plus one pixel of instance 2: IoU 3 / 4
    masks[1, 1, 2:] = 0.6  # exactly instance 2 once binarised: IoU 1; instance 1: 0
    assert best_iou_per_instance(masks, instances) == pytest.approx([0.75, 1.0])
    assert best_iou_per_instance(torch.zeros((0, 2, 4)), instances) == [0.0, 0.0]
