"""The default, training-free proposal generator ("superpixel"): hierarchical grouping of
superpixels, as the paper's selective-search ablation, on OpenCV/numpy only.

1. Over-segment the image into superpixels (superpixels.py).
2. Describe each superpixel by its mean CIELAB color twice: in the image, and in the image
   low-pass filtered at `texture_scale` (stripes, checkers and noise average out there, so a
   textured background looks uniform while a flat object stays distinct).
3. Merge adjacent regions greedily, cheapest first, with Ward's cost
   n_a * n_b / (n_a + n_b) * |f_a - f_b|^2 (n: pixels, f: the descriptor), into a merge tree
   whose merge heights are the costs (made non-decreasing).
4. Every region of the tree alive between the partitions into `max_regions` and `min_regions`
   regions is a proposal (several granularities, overlapping). Its weight in the per-pixel
   aggregation is its persistence: how long it survives on a log scale of merge height within
   that window. An object of one color lives from its last inner merge (cheap) to its merge
   with its surroundings (costly) and weighs much; its fragments and the mixed regions above
   it weigh little. Along any pixel's chain of nested regions the weights add up to the
   window's length, so every pixel gets the same total weight (less what the area limit and
   the cap on proposals leave out).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ovseg_ros.engine.proposals.base import (
    ProposalGenerator,
    Proposals,
    register_proposal_generator,
)
from ovseg_ros.engine.proposals.superpixels import watershed_superpixels
from ovseg_ros.engine.vocabulary import EncodedVocabulary

MIN_HEIGHT = 1e-3
"""Merge heights below this (pixels x squared CIELAB distance) count as this, for the log."""


@dataclass
class MergeTree:
    """Agglomerative merge tree over L leaves (superpixels).

    Node ids: leaves are 0..L-1; merge m creates node L + m from merges[m] = (a, b).
    sizes: (L + M,) pixels per node. heights: (M,) non-decreasing, each merge's Ward cost,
    raised to the previous merge's height where lower. If the adjacency graph is not connected,
    M < L - 1.
    """

    num_leaves: int
    merges: list[tuple[int, int]]
    sizes: list[float]
    heights: list[float]


def region_descriptors(
    image: np.ndarray, labels: np.ndarray, num_regions: int, texture_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per region: pixel count (R,) float64 and descriptor (R, 6) float64, the mean CIELAB of the
    image and of the image blurred with a Gaussian of sigma texture_scale * min(H, W) pixels."""
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    sigma = max(texture_scale * min(labels.shape), 0.5)
    smooth = cv2.GaussianBlur(lab, (0, 0), sigma)
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=num_regions).astype(np.float64)
    channels = np.concatenate([smooth, lab], axis=2).reshape(-1, 6)
    sums = np.stack(
        [np.bincount(flat, channels[:, c], minlength=num_regions) for c in range(6)], axis=1
    )
    return sizes, sums / np.maximum(sizes, 1)[:, None]


def adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """Pairs of 4-adjacent regions of labels (H, W) int: (P, 2) int64, a < b, unique."""
    first = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()]).astype(np.int64)
    second = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()]).astype(np.int64)
    differ = first != second
    low, high = np.minimum(first[differ], second[differ]), np.maximum(first[differ], second[differ])
    count = int(labels.max()) + 1 if labels.size else 1
    codes = np.unique(low * count + high)  # one integer per pair: a 1-D unique is fast
    return np.stack([codes // count, codes % count], axis=1)


def build_merge_tree(sizes: np.ndarray, descriptors: np.ndarray, pairs: np.ndarray) -> MergeTree:
    """Greedy Ward merging of adjacent regions: sizes (L,), descriptors (L, D), pairs (P, 2)."""
    num_leaves = len(sizes)
    node_sizes = [float(s) for s in sizes]
    features = list(descriptors)
    neighbours: list[set[int]] = [set() for _ in range(num_leaves)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)

    def cost(a: int, b: int) -> float:
        difference = features[a] - features[b]
        weight = node_sizes[a] * node_sizes[b] / (node_sizes[a] + node_sizes[b])
        return weight * float(difference @ difference)

    heap = [(cost(a, b), a, b) for a, b in pairs.tolist()]
    heapq.heapify(heap)
    merged = [False] * num_leaves
    merges: list[tuple[int, int]] = []
    heights: list[float] = []
    while heap:
        merge_cost, a, b = heapq.heappop(heap)
        if merged[a] or merged[b]:
            continue
        node = len(node_sizes)
        size = node_sizes[a] + node_sizes[b]
        features.append((features[a] * node_sizes[a] + features[b] * node_sizes[b]) / size)
        node_sizes.append(size)
        merged[a] = merged[b] = True
        merged.append(False)
        merges.append((a, b))
        heights.append(max(merge_cost, heights[-1] if heights else 0.0))
        around = (neighbours[a] | neighbours[b]) - {a, b}
        neighbours.append(around)
        for other in around:
            neighbours[other] -= {a, b}
            neighbours[other].add(node)
            heapq.heappush(heap, (cost(other, node), other, node))
    return MergeTree(num_leaves=num_leaves, merges=merges, sizes=node_sizes, heights=heights)


def node_leaves(tree: MergeTree) -> list[list[int]]:
    """Per node id, its leaf ids."""
    leaves = [[leaf] for leaf in range(tree.num_leaves)]
    for a, b in tree.merges:
        leaves.append(leaves[a] + leaves[b])
    return leaves


def persistence(tree: MergeTree, max_regions: int, min_regions: int) -> dict[int, float]:
    """Node id -> its persistence > 0, for the nodes alive in the window of the module docstring.

    Log merge heights: a node is born at the height of the merge that made it (leaves at
    MIN_HEIGHT) and dies at the height of the merge that consumes it. The window runs from the
    height where max_regions regions are left to the height of the merge that leaves fewer than
    min_regions. A tree without merges (one superpixel, or none merged) weighs every leaf 1.
    """
    num_leaves, count = tree.num_leaves, len(tree.merges)
    if count == 0:
        return {leaf: 1.0 for leaf in range(num_leaves)}
    floor = math.log(MIN_HEIGHT)
    heights = [math.log(max(h, MIN_HEIGHT)) for h in tree.heights]
    # After merge m (0-based), num_leaves - m - 1 regions are left.
    start = num_leaves - max_regions - 1
    low = heights[min(start, count - 1)] if start >= 0 else floor
    high = heights[min(max(num_leaves - min_regions, 0), count - 1)]
    birth = [floor] * num_leaves + heights
    death = [math.inf] * (num_leaves + count)
    for merge, (a, b) in enumerate(tree.merges):
        death[a] = death[b] = heights[merge]
    spans = {node: min(death[node], high) - max(birth[node], low) for node in range(len(birth))}
    alive = {node: span for node, span in spans.items() if span > 0}
    # A window of zero length (every merge equally cheap, e.g. a flat image): the tree's roots.
    return alive or {node: 1.0 for node, end in enumerate(death) if end == math.inf}


@register_proposal_generator("superpixel")
class SuperpixelGroupingProposals(ProposalGenerator):
    """Training-free, class-agnostic, multi-granularity masks (see the module docstring).

    superpixels: about how many superpixels to start from.
    max_regions, min_regions: the finest and the coarsest partition of the merge tree whose
        regions are proposed (2 <= min_regions <= max_regions; the whole image is proposed only
        when it is a single flat region).
    max_proposals: cap on the number of masks; the least persistent go first.
    min_area: regions smaller than this fraction of the image are not proposed.
    texture_scale: sigma of the low-pass filter, as a fraction of min(H, W).
    """

    def __init__(
        self,
        superpixels: int = 800,
        max_regions: int = 32,
        min_regions: int = 2,
        max_proposals: int = 100,
        min_area: float = 0.002,
        texture_scale: float = 0.03,
    ) -> None:
        if min(superpixels, max_proposals) < 1 or not max_regions >= min_regions >= 2:
            raise ValueError(
                "superpixels and max_proposals must be >= 1 and max_regions >= min_regions >= 2 "
                f"(got {superpixels}, {max_proposals}, {max_regions}, {min_regions})"
            )
        self.superpixels = superpixels
        self.max_regions = max_regions
        self.min_regions = min_regions
        self.max_proposals = max_proposals
        self.min_area = min_area
        self.texture_scale = texture_scale

    def __call__(self, image: np.ndarray, vocabulary: EncodedVocabulary | None = None) -> Proposals:
        """image: (H, W, 3) uint8 RGB -> Proposals: bool masks, most persistent first, with their
        persistence as weights."""
        height, width = image.shape[:2]
        labels = watershed_superpixels(image, self.superpixels)
        num_leaves = int(labels.max()) + 1
        sizes, descriptors = region_descriptors(image, labels, num_leaves, self.texture_scale)
        tree = build_merge_tree(sizes, descriptors, adjacent_pairs(labels))
        weights = persistence(tree, self.max_regions, self.min_regions)

        min_pixels = self.min_area * height * width
        kept = [n for n in weights if tree.sizes[n] >= min_pixels]
        if not kept:  # every region is tiny (a tiny image): the largest one
            kept = [max(weights, key=lambda n: tree.sizes[n])]
        kept.sort(key=lambda n: (weights[n], tree.sizes[n]), reverse=True)
        kept = kept[: self.max_proposals]

        leaves = node_leaves(tree)
        membership = np.zeros((len(kept), num_leaves), dtype=bool)
        for row, node in enumerate(kept):
            membership[row, leaves[node]] = True
        return Proposals(
            masks=torch.from_numpy(membership[:, labels]),
            weights=torch.tensor([weights[n] for n in kept], dtype=torch.float32),
        )
