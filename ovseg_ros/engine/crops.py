"""Masked-crop preparation for CLIP, as the paper's stage 2 does it.

Per mask: tight bounding box (expand ratio 1.0), pixels outside the mask set to the CLIP pixel
mean, CLIP normalisation, bicubic resize to the model input size (aspect ratio not kept).
Normalising first and zeroing outside the mask is the same thing: the mean maps to 0, and
normalisation (per-channel affine) commutes with interpolation (weights summing to 1).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def normalize_image(
    image: np.ndarray,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """image: (H, W, 3) uint8 RGB -> (3, H, W) float32 on `device`, (x / 255 - mean) / std."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    tensor = tensor.permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean, device=tensor.device).view(3, 1, 1)
    std_t = torch.tensor(std, device=tensor.device).view(3, 1, 1)
    return (tensor - mean_t) / std_t


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """masks: (N, H, W) bool -> (N, 4) int64 boxes (x0, y0, x1, y1), x1/y1 exclusive.

    Empty masks get the box (0, 0, 0, 0).
    """
    n, height, width = masks.shape
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    y0 = rows.float().argmax(dim=1)
    y1 = height - rows.flip(1).float().argmax(dim=1)
    x0 = cols.float().argmax(dim=1)
    x1 = width - cols.flip(1).float().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).long()
    boxes[~rows.any(dim=1)] = 0
    return boxes.reshape(n, 4)


def masked_crops(image: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crops of a normalised image, one per mask, ready for the CLIP image tower.

    image: (3, H, W) float, normalised (see normalize_image); masks: (N, H, W) bool, none empty;
    size: (height, width) of the model input. Returns (N, 3, height, width) float32: the mask's
    tight box, 0 (the pixel mean) outside the mask, bicubic-resized.
    """
    if masks.shape[0] == 0:
        return image.new_zeros((0, 3, *size))
    boxes = mask_boxes(masks).tolist()
    crops = []
    for mask, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
        if x1 <= x0 or y1 <= y0:
            raise ValueError("masked_crops got an empty mask; drop empty masks first")
        region = image[:, y0:y1, x0:x1] * mask[y0:y1, x0:x1]
        crops.append(F.interpolate(region[None], size=size, mode="bicubic", align_corners=False)[0])
    return torch.stack(crops)
