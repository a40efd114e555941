"""The torch proposal generator ("hierarchy"): its features, SLIC superpixels, region graph, the
parallel merge (against the sequential merge of grouping.py), persistence, and the generator."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from proposal_scenes import checkerboard_scene

from ovseg_ros.engine import photo_world, toy_world
from ovseg_ros.engine.proposal_metrics import best_iou_per_instance
from ovseg_ros.engine.proposals import build_proposal_generator, grouping
from ovseg_ros.engine.proposals.features import edge_strength, gaussian_blur, rgb_to_lab
from ovseg_ros.engine.proposals.hierarchy import (
    Hierarchy,
    HierarchyProposals,
    RegionGraph,
    build_hierarchy,
    node_masks,
    persistence,
    region_graph,
)
from ovseg_ros.engine.proposals.slic import slic_superpixels


def test_lab_conversion_agrees_with_opencv():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    expected = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    lab = rgb_to_lab(torch.from_numpy(image)).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(lab, expected, atol=0.5)  # OpenCV approximates the cube root


def test_gaussian_blur_agrees_with_opencv_away_from_the_borders():
    rng = np.random.default_rng(1)
    channels = rng.normal(0, 1, (2, 40, 50)).astype(np.float32)
    blurred = gaussian_blur(torch.from_numpy(channels), 2.0).numpy()
    for c in range(2):
        expected = cv2.GaussianBlur(channels[c], (13, 13), 2.0, borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(blurred[c, 8:-8, 8:-8], expected[8:-8, 8:-8], atol=1e-4)
    assert gaussian_blur(torch.ones(1, 3, 2), 5.0).allclose(torch.ones(1, 3, 2))  # tiny image


def test_edge_strength_peaks_on_a_step_and_is_zero_on_flat_colour():
    lab = torch.zeros(3, 20, 20)
    lab[0, :, 10:] = 50.0
    strength = edge_strength(lab)
    assert strength[:, 9:11].min() > 5 * strength[:, :5].max()
    assert torch.equal(edge_strength(torch.full((3, 8, 8), 30.0)), torch.zeros(8, 8))


def test_slic_superpixels_are_dense_about_the_count_and_follow_colour_edges():
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, :37] = (200, 30, 30)
    image[:, 37:] = (30, 30, 200)
    lab = rgb_to_lab(torch.from_numpy(image))
    labels = slic_superpixels(lab, 48, compactness=10.0)
    count = int(labels.max()) + 1
    assert labels.shape == (60, 80) and labels.dtype == torch.int64
    assert sorted(torch.unique(labels).tolist()) == list(range(count))
    assert 30 <= count <= 60
    left = image[..., 0].astype(bool)  # the red half
    for label in range(count):
        inside = (labels == label).numpy()
        assert left[inside].all() or not left[inside].any(), f"superpixel {label} crosses the edge"


def test_region_graph_of_a_hand_made_label_map():
    labels = torch.tensor([[0, 0, 1], [2, 2, 1], [2, 3, 3]])
    features = torch.arange(9, dtype=torch.float32).view(1, 3, 3)
    graph = region_graph(labels, features, torch.ones(3, 3))
    assert graph.pairs.tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]
    # Pixel pairs along each border: 0|1 one, 0/2 two, 1|2 one, 1/3 one, 2|3 and 2/3 two.
    assert graph.border.tolist() == [1, 2, 1, 1, 2]
    assert graph.contrast.tolist() == graph.border.tolist()  # edge strength 1 everywhere
    assert graph.sizes.tolist() == [2, 2, 3, 2]
    assert graph.sums[:, 0].tolist() == [0 + 1, 2 + 5, 3 + 4 + 6, 7 + 8]
    assert graph.energy.tolist() == [2, 2, 3, 2]


def _leaf_sets(merges: list[tuple[int, int]], num_leaves: int) -> set[frozenset[int]]:
    leaves = [[leaf] for leaf in range(num_leaves)]
    for a, b in merges:
        leaves.append(leaves[a] + leaves[b])
    return {frozenset(node) for node in leaves}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parallel_merge_builds_the_sequential_ward_tree_when_every_region_is_adjacent(seed):
    """Reciprocal nearest neighbours merged in rounds give Ward's sequential tree exactly when no
    adjacency constraint intervenes (the textbook property the round-wise merge relies on)."""
    rng = np.random.default_rng(seed)
    count = 40
    sizes = rng.integers(1, 50, count).astype(np.float32)
    descriptors = rng.normal(0, 1, (count, 3)).astype(np.float32)
    pairs = np.array([(a, b) for a in range(count) for b in range(a + 1, count)])
    graph = RegionGraph(
        sizes=torch.from_numpy(sizes),
        sums=torch.from_numpy(descriptors * sizes[:, None]),
        pairs=torch.from_numpy(pairs),
        border=torch.ones(len(pairs)),
        contrast=torch.ones(len(pairs)),
        energy=torch.ones(count),
    )
    parallel = build_hierarchy(graph, edge_power=0.0, min_regions=2)
    sequential = grouping.build_merge_tree(
        sizes.astype(np.float64), descriptors.astype(np.float64), pairs
    )
    assert len(parallel.leaf_nodes) < count - 1  # several merges per round
    assert _leaf_sets(parallel.merges.tolist(), count) == _leaf_sets(sequential.merges, count)
    heights = parallel.heights.tolist()
    assert heights == sorted(heights)  # raised to be non-decreasing, as the sequential tree's
    assert heights[-1] == pytest.approx(sequential.heights[-1], rel=1e-4)  # the root merge


def test_persistence_agrees_with_the_sequential_generators():
    # Leaves 0..3; merges at heights 1, 10, 100: (0, 1) -> 4, (2, 3) -> 5, (4, 5) -> 6.
    merges = [(0, 1), (2, 3), (4, 5)]
    heights = [1.0, 10.0, 100.0]
    sizes = [1.0, 1, 1, 1, 2, 2, 4]
    hierarchy = Hierarchy(
        num_leaves=4,
        merges=torch.tensor(merges),
        heights=torch.tensor(heights),
        sizes=torch.tensor(sizes),
        leaf_nodes=torch.tensor([[4, 4, 5, 5], [6, 6, 6, 6]]),
        created_round=torch.tensor([-1, -1, -1, -1, 0, 0, 1]),
    )
    tree = grouping.MergeTree(num_leaves=4, merges=merges, sizes=sizes, heights=heights)
    for max_regions, min_regions in ((3, 2), (4, 2), (2, 2)):
        expected = grouping.persistence(tree, max_regions, min_regions)
        weights = persistence(hierarchy, max_regions, min_regions)
        assert {n: w for n, w in enumerate(weights.tolist()) if w > 0} == pytest.approx(expected)
    labels = torch.tensor([[0, 1], [2, 3]])
    masks = node_masks(hierarchy, torch.tensor([5, 6, 1]), labels)
    assert masks.tolist() == [
        [[False, False], [True, True]],
        [[True, True], [True, True]],
        [[False, True], [False, False]],
    ]


def test_generator_finds_the_objects_and_the_textured_background():
    image, disc, rectangle = checkerboard_scene()
    proposals = build_proposal_generator("hierarchy")(image)
    masks = proposals.masks
    assert masks.dtype == torch.bool and masks.shape[1:] == (120, 160)
    assert proposals.weights is not None and (proposals.weights > 0).all()
    assert proposals.weights.tolist() == sorted(proposals.weights.tolist(), reverse=True)
    instances = disc.astype(np.int32) + 2 * rectangle + 3 * ~(disc | rectangle)
    assert min(best_iou_per_instance(masks, instances)) > 0.9


def test_generator_takes_arrays_and_tensors_alike_and_is_deterministic():
    image, _, _ = checkerboard_scene()
    generator = HierarchyProposals(max_proposals=5)
    first, second = generator(image), generator(torch.from_numpy(image))
    assert len(first) == 5
    assert torch.equal(first.masks, second.masks) and torch.equal(first.weights, second.weights)


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 3, 3), (5, 5, 3)])
def test_generator_on_tiny_and_flat_images(shape):
    proposals = HierarchyProposals()(np.full(shape, 90, np.uint8))
    assert len(proposals) >= 1 and proposals.masks.shape[1:] == shape[:2]
    assert proposals.masks.any(dim=0).all()  # the image is covered


def test_generator_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_regions >= weight_regions >= min_regions >= 2"):
        HierarchyProposals(max_regions=2, min_regions=3)
    with pytest.raises(ValueError, match="bad settings for proposal generator 'hierarchy'"):
        build_proposal_generator("hierarchy", colour=1)


def test_proposal_quality_on_held_out_photo_textured_scenes():
    """The textures-only photo world, 8 held-out scenes: mean best IoU per object (0.76 on these
    8 when the defaults were chosen; the README gives 30 scenes per variant)."""
    generator = HierarchyProposals()
    ious: list[float] = []
    for seed in range(photo_world.EVAL_SEEDS.start, photo_world.EVAL_SEEDS.start + 8):
        scene = photo_world.generate_scene(seed, variant="texture")
        ious += best_iou_per_instance(generator(scene.image).masks, scene.instances)
    assert np.mean(ious) >= 0.7, ious


def test_proposal_quality_on_held_out_toy_scenes():
    generator = HierarchyProposals()
    ious: list[float] = []
    for seed in range(toy_world.EVAL_SEEDS.start, toy_world.EVAL_SEEDS.start + 10):
        scene = toy_world.generate_scene(seed)
        ious += best_iou_per_instance(generator(scene.image).masks, scene.instances)
    assert np.mean(ious) >= 0.9, ious


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generator_on_cuda_agrees_with_the_cpu():
    """Same ops on both devices; float rounding may flip a few near-tied merges, so the masks
    must agree per object to within 0.02 IoU on average, not bit for bit."""
    cpu, cuda = HierarchyProposals(device="cpu"), HierarchyProposals(device="cuda")
    for seed in range(toy_world.EVAL_SEEDS.start, toy_world.EVAL_SEEDS.start + 5):
        scene = toy_world.generate_scene(seed)
        on_cpu = best_iou_per_instance(cpu(scene.image).masks, scene.instances)
        on_cuda_masks = cuda(torch.from_numpy(scene.image).cuda()).masks
        assert on_cuda_masks.device.type == "cuda"
        on_cuda = best_iou_per_instance(on_cuda_masks.cpu(), scene.instances)
        assert abs(np.mean(on_cpu) - np.mean(on_cuda)) <= 0.02
