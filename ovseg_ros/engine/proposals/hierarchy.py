"""The default, training-free proposal generator ("hierarchy"): a merge hierarchy of superpixels
grouped by colour and by the strength of their borders against their textures, in torch on the
CLIP model's device.

1. Per pixel (features.py): CIELAB colour, the colour low-pass filtered at `texture_scale` (a
   fine texture averages out there), and the edge strength (colour gradient magnitude).
2. SLIC superpixels (slic.py) on colour.
3. Each region is described by the mean of its pixels' colours (a merge's descriptor is the
   size-weighted mean of its parts') and by its inner edge strength (the mean over its pixels:
   how textured it is), each pair of adjacent regions by the mean edge strength along its shared
   border.
4. Regions merge in rounds, all on the device: every region finds its cheapest neighbour, and
   pairs that chose each other merge (reciprocal nearest neighbours: for Ward's cost this builds the
   same tree as merging one cheapest pair at a time, up to the order of equal costs). The cost is
   Ward's, n_a n_b / (n_a + n_b) |f_a - f_b|^2, times (border strength / inner strength) **
   `edge_power`, the inner strength being the mean edge strength over both regions' pixels: a
   border stronger than the texture on either side of it (an object's outline) makes a merge
   dearer, one as strong as the texture (a seam inside one texture) does not.
5. As the older "superpixel" generator (grouping.py): every region alive between the partitions
   into `max_regions` and `min_regions` regions is a proposal, ranked by its persistence on a log
   scale of merge height. Its weight in the aggregation, by which the proposals are also
   ranked, is its persistence from `weight_regions` regions on plus FINE_WEIGHT of its
   persistence over all the proposed partitions.

The host waits for the device four times per merge round (the sizes of the merged pairs, the
surviving regions, the remaining borders and the unique borders) and six times per frame, never
per mask: 130 waits for a 320x240 toy scene (31 rounds), 146 for a 640x480 photo scene (35
rounds). Masks are gathered on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ovseg_ros.engine.proposals.base import (
    ProposalGenerator,
    Proposals,
    register_proposal_generator,
)
from ovseg_ros.engine.proposals.features import (
    edge_strength,
    gaussian_blur,
    rgb_to_lab,
)
from ovseg_ros.engine.proposals.slic import slic_superpixels
from ovseg_ros.engine.vocabulary import EncodedVocabulary

EDGE_FLOOR = 1.0
"""Added to the inner edge strength (CIELAB units per pixel), so flat regions do not divide by 0."""
FINE_WEIGHT = 0.1
"""A region's weight in the aggregation: its persistence from weight_regions regions on, plus
FINE_WEIGHT times its persistence over all proposed partitions (from max_regions on). Fragments,
alive only in the finer partitions, widen the choice of masks (recall) without outvoting the
regions that persist (fragments of a shape look like other shapes to CLIP)."""
MIN_HEIGHT = 1e-3
"""Merge heights below this count as this, for the log (as grouping.MIN_HEIGHT)."""


@dataclass
class RegionGraph:
    """Regions and their adjacency, on one device.

    sizes: (R,) float32 pixels; sums: (R, D) float32 feature sums (descriptor = sums / sizes);
    pairs: (P, 2) int64 adjacent regions, a < b, unique; border: (P,) float32 pixel pairs along
    the shared border; contrast: (P,) float32 summed edge strength over those pixel pairs;
    energy: (R,) float32 summed edge strength over each region's pixels.
    """

    sizes: torch.Tensor
    sums: torch.Tensor
    pairs: torch.Tensor
    border: torch.Tensor
    contrast: torch.Tensor
    energy: torch.Tensor


@dataclass
class Hierarchy:
    """Merge tree over L leaves, in merge order. Node ids: leaves 0..L-1, merge m makes L + m.

    merges: (M, 2) int64 node ids; heights: (M,) float32 non-decreasing merge costs; sizes:
    (L + M,) float32 pixels; leaf_nodes: (K, L) int64, row k the node holding each leaf after
    round k; created_round: (L + M,) int64, the round that made each node (-1 for leaves).
    """

    num_leaves: int
    merges: torch.Tensor
    heights: torch.Tensor
    sizes: torch.Tensor
    leaf_nodes: torch.Tensor
    created_round: torch.Tensor


def unique_pairs(
    low: torch.Tensor, high: torch.Tensor, count: int, *values: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Pairs (low[i], high[i]) made unique, values summed per pair: (P, 2) int64, then one (P,)
    tensor per value."""
    codes = low * count + high
    unique, inverse = torch.unique(codes, return_inverse=True)
    summed = [
        torch.zeros(len(unique), device=low.device, dtype=v.dtype).index_add_(0, inverse, v)
        for v in values
    ]
    return (torch.stack([unique // count, unique % count], dim=1), *summed)


def region_graph(labels: torch.Tensor, features: torch.Tensor, edges: torch.Tensor) -> RegionGraph:
    """labels: (H, W) int64 dense region ids; features: (D, H, W) per-pixel descriptors; edges:
    (H, W) edge strength per pixel."""
    count = int(labels.max()) + 1
    flat = labels.reshape(-1)
    sizes = torch.zeros(count, device=labels.device).index_add_(
        0, flat, torch.ones_like(flat, dtype=torch.float32)
    )
    sums = torch.zeros(count, features.shape[0], device=labels.device).index_add_(
        0, flat, features.reshape(features.shape[0], -1).T
    )
    energy = torch.zeros(count, device=labels.device).index_add_(0, flat, edges.reshape(-1))
    # 4-neighbour pixel pairs: left-right, then top-bottom; a pair's strength is its pixels' mean.
    a = torch.cat([labels[:, :-1].reshape(-1), labels[:-1, :].reshape(-1)])
    b = torch.cat([labels[:, 1:].reshape(-1), labels[1:, :].reshape(-1)])
    strength = 0.5 * torch.cat(
        [(edges[:, :-1] + edges[:, 1:]).reshape(-1), (edges[:-1, :] + edges[1:, :]).reshape(-1)]
    )
    differ = (a != b).nonzero().squeeze(1)
    a, b, strength = a[differ], b[differ], strength[differ]
    pairs, border, contrast = unique_pairs(
        torch.minimum(a, b), torch.maximum(a, b), count, torch.ones_like(strength), strength
    )
    return RegionGraph(
        sizes=sizes, sums=sums, pairs=pairs, border=border, contrast=contrast, energy=energy
    )


def merge_costs(graph: RegionGraph, edge_power: float) -> torch.Tensor:
    """(P,) Ward cost of each adjacent pair, times (border strength / inner strength) ** edge_power:
    the mean edge strength along the shared border against the mean over both regions' pixels."""
    a, b = graph.pairs[:, 0], graph.pairs[:, 1]
    means = graph.sums / graph.sizes[:, None]
    difference = means[a] - means[b]
    ward = graph.sizes[a] * graph.sizes[b] / (graph.sizes[a] + graph.sizes[b])
    cost = ward * (difference * difference).sum(1)
    if edge_power > 0:
        inner = (graph.energy[a] + graph.energy[b]) / (graph.sizes[a] + graph.sizes[b])
        ratio = (graph.contrast / graph.border) / (inner + EDGE_FLOOR)
        cost = cost * ratio.pow(edge_power)
    return cost


def build_hierarchy(graph: RegionGraph, edge_power: float, min_regions: int) -> Hierarchy:
    """Merges reciprocal cheapest neighbours round by round (module docstring, step 4) until
    fewer than `min_regions` regions are left or none are adjacent."""
    device = graph.sizes.device
    num_leaves = len(graph.sizes)
    leaf_sizes = graph.sizes
    node_of_region = torch.arange(num_leaves, device=device)
    leaf_region = torch.arange(num_leaves, device=device)
    merges, heights, new_sizes, rounds, leaf_nodes = [], [], [], [], []
    next_node = num_leaves
    while len(graph.pairs) and len(graph.sizes) >= min_regions:
        regions, edges = len(graph.sizes), len(graph.pairs)
        cost = merge_costs(graph, edge_power)
        a, b = graph.pairs[:, 0], graph.pairs[:, 1]
        cheapest = torch.full((regions,), math.inf, device=device)
        cheapest = cheapest.scatter_reduce(0, a, cost, "amin").scatter_reduce(0, b, cost, "amin")
        index = torch.arange(edges, device=device)
        chosen = torch.full((regions,), edges, device=device)
        chosen = chosen.scatter_reduce(0, a, torch.where(cost == cheapest[a], index, edges), "amin")
        chosen = chosen.scatter_reduce(0, b, torch.where(cost == cheapest[b], index, edges), "amin")
        # Host waits per round: the three nonzero() and the unique in unique_pairs.
        mutual = ((chosen[a] == index) & (chosen[b] == index)).nonzero().squeeze(1)
        merged = mutual[torch.argsort(cost[mutual], stable=True)]
        count = len(merged)
        # New regions: the survivors first, then one per merged pair, in order of cost.
        target = torch.full((regions,), -1, device=device)
        pair_ids = torch.arange(count, device=device)
        absorbed = torch.zeros(regions, dtype=torch.bool, device=device)
        absorbed[a[merged]] = True
        absorbed[b[merged]] = True
        survivors = (~absorbed).nonzero().squeeze(1)
        target[survivors] = torch.arange(len(survivors), device=device)
        target[a[merged]] = len(survivors) + pair_ids
        target[b[merged]] = len(survivors) + pair_ids
        merge_nodes = torch.stack([node_of_region[a[merged]], node_of_region[b[merged]]], dim=1)
        merges.append(merge_nodes)
        heights.append(cost[merged])
        sizes = torch.zeros(len(survivors) + count, device=device).index_add_(
            0, target, graph.sizes
        )
        new_sizes.append(sizes[len(survivors) :])
        rounds.append(torch.full((count,), len(rounds), device=device))
        node_of_region = torch.cat([node_of_region[survivors], next_node + pair_ids])
        next_node += count
        leaf_region = target[leaf_region]
        leaf_nodes.append(node_of_region[leaf_region])
        sums = torch.zeros(len(sizes), graph.sums.shape[1], device=device).index_add_(
            0, target, graph.sums
        )
        ta, tb = target[a], target[b]
        keep = (ta != tb).nonzero().squeeze(1)
        ta, tb = ta[keep], tb[keep]
        pairs, border, contrast = unique_pairs(
            torch.minimum(ta, tb),
            torch.maximum(ta, tb),
            len(sizes),
            graph.border[keep],
            graph.contrast[keep],
        )
        energy = torch.zeros(len(sizes), device=device).index_add_(0, target, graph.energy)
        graph = RegionGraph(
            sizes=sizes, sums=sums, pairs=pairs, border=border, contrast=contrast, energy=energy
        )
    empty = torch.zeros(0, device=device)
    all_heights = torch.cat(heights) if heights else empty
    if len(all_heights):
        all_heights = torch.cummax(all_heights, dim=0).values
    return Hierarchy(
        num_leaves=num_leaves,
        merges=torch.cat(merges)
        if merges
        else torch.zeros((0, 2), dtype=torch.long, device=device),
        heights=all_heights,
        sizes=torch.cat([leaf_sizes, *new_sizes]),
        leaf_nodes=torch.stack(leaf_nodes)
        if leaf_nodes
        else torch.zeros((0, num_leaves), dtype=torch.long, device=device),
        created_round=torch.cat([torch.full((num_leaves,), -1, device=device), *rounds]).long(),
    )


def persistence(hierarchy: Hierarchy, max_regions: int, min_regions: int) -> torch.Tensor:
    """(L + M,) float32 persistence of every node, 0 for nodes outside the window (the window and
    the measure as grouping.persistence: log merge heights, from the height where max_regions
    regions are left to that of the merge leaving fewer than min_regions). A tree without merges
    weighs every leaf 1; a window of zero length weighs the roots 1."""
    num_leaves, count = hierarchy.num_leaves, len(hierarchy.heights)
    device = hierarchy.sizes.device
    if count == 0:
        return torch.ones(num_leaves, device=device)
    floor = math.log(MIN_HEIGHT)
    heights = hierarchy.heights.clamp(min=MIN_HEIGHT).log()
    start = num_leaves - max_regions - 1
    low = heights[min(start, count - 1)] if start >= 0 else heights.new_tensor(floor)
    high = heights[min(max(num_leaves - min_regions, 0), count - 1)]
    birth = torch.cat([torch.full((num_leaves,), floor, device=device), heights])
    death = torch.full((num_leaves + count,), math.inf, device=device)
    death[hierarchy.merges[:, 0]] = heights
    death[hierarchy.merges[:, 1]] = heights
    span = (torch.minimum(death, high) - torch.maximum(birth, low)).clamp(min=0)
    roots = (death == math.inf).float()
    return torch.where(span.sum() > 0, span, roots)


def node_masks(hierarchy: Hierarchy, nodes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(K,) node ids -> (K, H, W) bool masks over the leaf label map labels (H, W)."""
    num_leaves = hierarchy.num_leaves
    leaves = torch.arange(num_leaves, device=labels.device)
    rounds = hierarchy.created_round[nodes]
    history = torch.cat([leaves[None], hierarchy.leaf_nodes])  # row 0: before any merge
    membership = history[rounds + 1] == nodes[:, None]  # (K, L)
    return membership[:, labels]


@register_proposal_generator("hierarchy")
class HierarchyProposals(ProposalGenerator):
    """Training-free, class-agnostic, multi-granularity masks from colour and border strength, in
    torch on `device` (see the module docstring).

    superpixels: about how many SLIC superpixels to start from; compactness: SLIC's weight of
    position against colour (CIELAB units per grid spacing).
    max_regions, min_regions: the finest and the coarsest partition whose regions are proposed;
    weight_regions: the finest partition whose persistence counts fully in a region's weight
    (see FINE_WEIGHT; 2 <= min_regions <= weight_regions <= max_regions).
    max_proposals: cap on the number of masks; the least persistent go first.
    min_area: regions smaller than this fraction of the image are not proposed.
    texture_scale: sigma of the colour low-pass filter, as a fraction of min(H, W).
    edge_power: how much border strength counts: a merge's cost is multiplied by (mean edge
        strength along the shared border / mean edge strength inside both regions) ** edge_power;
        0 is Ward's cost alone.
    device: "cpu", "cuda", "cuda:N" or a torch.device; images arrive as numpy arrays or as
        (H, W, 3) uint8 tensors (already on the device: no copy).
    """

    takes_tensors = True

    def __init__(
        self,
        superpixels: int = 600,
        compactness: float = 20.0,
        max_regions: int = 128,
        weight_regions: int = 32,
        min_regions: int = 2,
        max_proposals: int = 100,
        min_area: float = 0.002,
        texture_scale: float = 0.03,
        edge_power: float = 4.0,
        device: str | torch.device = "cpu",
    ) -> None:
        if min(superpixels, max_proposals) < 1 or not (
            max_regions >= weight_regions >= min_regions >= 2
        ):
            raise ValueError(
                "superpixels and max_proposals must be >= 1 and max_regions >= weight_regions >= "
                f"min_regions >= 2 (got {superpixels}, {max_proposals}, {max_regions}, "
                f"{weight_regions}, {min_regions})"
            )
        self.superpixels = superpixels
        self.compactness = compactness
        self.max_regions = max_regions
        self.weight_regions = weight_regions
        self.min_regions = min_regions
        self.max_proposals = max_proposals
        self.min_area = min_area
        self.texture_scale = texture_scale
        self.edge_power = edge_power
        self.device = torch.device(device)

    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (H, W, 3) uint8 on the device -> (per-pixel descriptor (6, H, W): CIELAB and
        CIELAB low-passed, CIELAB (3, H, W))."""
        lab = rgb_to_lab(image)
        sigma = max(self.texture_scale * min(image.shape[:2]), 0.5)
        smooth = gaussian_blur(lab, sigma)
        return torch.cat([lab, smooth]), lab

    def __call__(
        self, image: np.ndarray | torch.Tensor, vocabulary: EncodedVocabulary | None = None
    ) -> Proposals:
        """image: (H, W, 3) uint8 RGB (array, or tensor on any device) -> Proposals: bool masks
        on the device, heaviest first, with their weights (FINE_WEIGHT)."""
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image))
        pixels = image.to(self.device)
        height, width = pixels.shape[:2]
        descriptor, lab = self.features(pixels)
        labels = slic_superpixels(lab, self.superpixels, self.compactness)
        graph = region_graph(labels, descriptor, edge_strength(lab))
        hierarchy = build_hierarchy(graph, self.edge_power, self.min_regions)
        wide = persistence(hierarchy, self.max_regions, self.min_regions)
        weights = persistence(hierarchy, self.weight_regions, self.min_regions) + FINE_WEIGHT * wide
        big = hierarchy.sizes >= self.min_area * height * width
        if not bool((big & (weights > 0)).any()):  # every region is tiny: the largest one
            big = hierarchy.sizes == hierarchy.sizes.max()
            weights = torch.where(big, 1.0, weights)
        score = torch.where(big, weights, 0.0)
        # Heaviest first; equal weights: the larger region first.
        by_size = torch.argsort(hierarchy.sizes, descending=True, stable=True)
        order = by_size[torch.argsort(score[by_size], descending=True, stable=True)]
        nodes = order[: min(self.max_proposals, int((score > 0).sum()))]
        return Proposals(masks=node_masks(hierarchy, nodes, labels), weights=weights[nodes])
