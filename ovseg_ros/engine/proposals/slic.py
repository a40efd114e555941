"""SLIC superpixels in torch: k-means over (features, position), each pixel compared only with the
centres of its own and the eight neighbouring grid cells (Achanta et al., TPAMI 2012).

The grid is a block partition of square cells of `spacing` pixels (the image padded to whole
cells); pixels are held cell by cell, so the distances of a cell's pixels to its nine candidate
centres are one batched matrix product. Runs on the device of its input with the same ops on
CPU and GPU. Superpixels are numbered densely but, unlike the watershed's (superpixels.py), not
always connected: a few stray pixels of one superpixel may sit inside another.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EMPTY_CENTRE = 1e6
"""Feature value of a cluster left without pixels: farther from every pixel than any centre."""
NEIGHBOUR_CELLS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def grid_spacing(height: int, width: int, count: int) -> int:
    """Side in pixels of the square cells that give about `count` cells over height x width."""
    return max(1, round(math.sqrt(height * width / max(count, 1))))


def slic_superpixels(
    features: torch.Tensor, count: int, compactness: float, iterations: int = 4
) -> torch.Tensor:
    """About `count` superpixels of features (C, H, W) float.

    The distance of a pixel to a centre is |f - f_c|^2 + (compactness / S)^2 |xy - xy_c|^2, with
    S the grid spacing in pixels: compactness is how many feature units one grid spacing weighs.
    Returns labels: (H, W) int64, values 0..N-1 (N superpixels), every value used.
    """
    channels, height, width = features.shape
    device = features.device
    spacing = grid_spacing(height, width, count)
    rows, cols = math.ceil(height / spacing), math.ceil(width / spacing)
    padded_h, padded_w = rows * spacing, cols * spacing
    weight = compactness / spacing
    ys = torch.arange(padded_h, device=device, dtype=torch.float32)[:, None].expand(-1, padded_w)
    xs = torch.arange(padded_w, device=device, dtype=torch.float32)[None, :].expand(padded_h, -1)
    padding = (0, padded_w - width, 0, padded_h - height)
    values = F.pad(features[None], padding, mode="replicate")[0]
    points = torch.cat([values, weight * ys[None], weight * xs[None]])  # (D, Hp, Wp)
    depth = channels + 2
    # Cell-major pixel order: (rows * cols, S * S, D), each cell's pixels together.
    by_cell = (
        points.view(depth, rows, spacing, cols, spacing)
        .permute(1, 3, 2, 4, 0)
        .reshape(rows * cols, spacing * spacing, depth)
    )
    inside = torch.zeros(padded_h, padded_w, device=device)
    inside[:height, :width] = 1.0
    inside = inside.view(rows, spacing, cols, spacing).permute(0, 2, 1, 3).reshape(-1)
    # Cluster k belongs to cell k = r * cols + c; a pixel's candidate j is its cell + offset j.
    cell = torch.arange(rows * cols, device=device).view(rows, cols)
    cell_padded = F.pad(cell[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0].long()
    candidates = torch.stack(
        [cell_padded[1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + cols] for dy, dx in NEIGHBOUR_CELLS],
        dim=-1,
    ).view(rows * cols, len(NEIGHBOUR_CELLS))
    labels = cell.view(-1, 1).expand(-1, spacing * spacing).reshape(-1)
    flat_points = by_cell.reshape(-1, depth)
    for _ in range(iterations):
        sizes = torch.zeros(rows * cols, device=device).index_add_(0, labels, inside)
        sums = torch.zeros(rows * cols, depth, device=device).index_add_(
            0, labels, flat_points * inside[:, None]
        )
        centres = torch.where(sizes[:, None] > 0, sums / sizes.clamp(min=1)[:, None], EMPTY_CENTRE)
        near = centres[candidates]  # (cells, 9, D)
        # |p - c|^2 less |p|^2, which is the same for every candidate of a pixel.
        distance = (near * near).sum(2)[:, None, :] - 2 * torch.bmm(by_cell, near.transpose(1, 2))
        labels = torch.gather(candidates, 1, distance.argmin(2)).reshape(-1)
    labels = (
        labels.view(rows, cols, spacing, spacing).permute(0, 2, 1, 3).reshape(padded_h, padded_w)
    )
    _, dense = torch.unique(labels[:height, :width], return_inverse=True)
    return dense.reshape(height, width)
