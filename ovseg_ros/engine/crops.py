"""Masked-crop preparation for CLIP, as the paper's stage 2 does it.

Per mask: tight bounding box (expand ratio 1.0), pixels outside the mask set to the CLIP pixel
mean, CLIP normalisation, bicubic resize to the model input size (aspect ratio not kept).
Normalising first and zeroing outside the mask is the same thing: the mean maps to 0, and
normalisation (per-channel affine) commutes with interpolation (weights summing to 1).
"""

from __future__ import annotations

import numpy as np
import torch


def normalize_image(
    image: np.ndarray | torch.Tensor,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """image: (H, W, 3) uint8 RGB, an array or a tensor (one already on `device` is not copied)
    -> (3, H, W) float32 on `device`, (x / 255 - mean) / std."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    tensor = image.to(device)
    tensor = tensor.permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean, device=tensor.device).view(3, 1, 1)
    std_t = torch.tensor(std, device=tensor.device).view(3, 1, 1)
    return (tensor - mean_t) / std_t


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """masks: (N, H, W) bool -> (N, 4) int64 boxes (x0, y0, x1, y1), x1/y1 exclusive.

    Empty masks get the box (0, 0, 0, 0).
    """
    n, height, width = masks.shape
    # The maximum over 0/1 bytes is any(), and many times faster than any() on CPU.
    flags = (masks if masks.dtype == torch.bool else masks != 0).view(torch.uint8)
    rows = flags.amax(dim=2) > 0
    cols = flags.amax(dim=1) > 0
    y0 = rows.float().argmax(dim=1)
    y1 = height - rows.flip(1).float().argmax(dim=1)
    x0 = cols.float().argmax(dim=1)
    x1 = width - cols.flip(1).float().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).long()
    boxes[~rows.any(dim=1)] = 0
    return boxes.reshape(n, 4)


def crop_chunk(device: torch.device) -> int:
    """masked_crops' chunk for a device: 8 masks on the CPU (small buffers that stay cached),
    32 on a GPU (fewer kernel launches; buffers of about 0.3 GB for 224 px crops of boxes up to
    640 px wide, growing with the box width)."""
    return 8 if device.type == "cpu" else 32


_CUBIC_A = -0.75  # the Keys cubic coefficient of PyTorch's bicubic


def _keys_cubic(x: torch.Tensor) -> torch.Tensor:
    """The bicubic convolution kernel at distances x in [0, 2]."""
    near = ((_CUBIC_A + 2) * x - (_CUBIC_A + 3)) * x * x + 1
    far = ((_CUBIC_A * x - 5 * _CUBIC_A) * x + 8 * _CUBIC_A) * x - 4 * _CUBIC_A
    return torch.where(x < 1, near, far)


def _cubic_taps(length: torch.Tensor, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The four taps per output pixel of F.interpolate(mode="bicubic", align_corners=False)
    along one axis, resizing `length` pixels to `out_size`.

    length: (N,) int64, all positive. Returns indices (4, N, out_size) int64, clamped to
    [0, length - 1] (border pixels repeat), and weights (4, N, out_size) float32.
    """
    scale = length.float() / out_size
    centres = torch.arange(out_size, device=length.device, dtype=torch.float64) + 0.5
    # Exact in float64, then one rounding: what the fused multiply-add in PyTorch's kernels gives.
    source = (scale.double()[:, None] * centres - 0.5).float()
    first = source.floor()
    t = source - first
    weights = _keys_cubic(torch.stack([t + 1, t, 1 - t, 2 - t]))
    offsets = torch.arange(-1, 3, device=length.device)[:, None, None]
    index = (first.long() + offsets).clamp(min=0)
    return torch.minimum(index, length[:, None] - 1), weights


def _resize_rows(
    image_runs: torch.Tensor,
    mask_runs: torch.Tensor,
    starts: torch.Tensor,
    mask_starts: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """The row pass over image * mask, on runs of R pixels along image rows.

    image_runs: (3 * H * W - R + 1, R), the runs from every pixel of the flat image; mask_runs:
    the same of the flat (N, H, W) masks; starts: (4, C, 3, S), the run of each tap, mask,
    channel and output row; mask_starts, weights: (4, C, S). Returns (C, 3, S, R).
    """
    count, _, size = starts.shape[1:]
    run = image_runs.shape[1]
    out = image_runs.new_empty((count, 3, size, run))
    pixels = torch.empty_like(out)
    for tap in range(4):
        torch.index_select(image_runs, 0, starts[tap].view(-1), out=pixels.view(-1, run))
        inside = mask_runs.index_select(0, mask_starts[tap].view(-1)).view(count, 1, size, run)
        weighted = inside * weights[tap, :, None, :, None]
        if tap == 0:
            torch.mul(pixels, weighted, out=out)
        else:
            out.addcmul_(pixels, weighted)
    return out


def _resize_cols(values: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The column pass: values (C, 3, S_h, R); index, weights: (4, C, S) taps into R.
    Returns (C, 3, S_h, S)."""
    index = index[:, :, None, None, :].expand(-1, -1, 3, values.shape[2], -1)
    weights = weights[:, :, None, None, :]
    taps = values.new_empty(index.shape[1:])
    out = torch.empty_like(taps)
    for tap in range(4):
        torch.gather(values, 3, index[tap], out=taps)
        if tap == 0:
            torch.mul(taps, weights[tap], out=out)
        else:
            out.addcmul_(taps, weights[tap])
    return out


def masked_crops(
    image: torch.Tensor, masks: torch.Tensor, size: tuple[int, int], chunk: int = 8
) -> torch.Tensor:
    """Crops of a normalised image, one per mask, ready for the CLIP image tower.

    image: (3, H, W) float, normalised (see normalize_image); masks: (N, H, W) bool, none empty;
    size: (height, width) of the model input. Returns (N, 3, height, width) float32: the mask's
    tight box, 0 (the pixel mean) outside the mask, bicubic-resized (as F.interpolate with
    mode="bicubic", align_corners=False resizes the box alone).

    chunk: how many masks are resized together, those of similar box widths; the working memory
    is under 5 * chunk * 3 * height * max(width, the chunk's widest box) floats. On CPU, small
    chunks keep the buffers small and cached; on a GPU, larger ones mean fewer kernels.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    count = masks.shape[0]
    if count == 0:
        return image.new_zeros((0, 3, *size))
    boxes = mask_boxes(masks)
    order = torch.argsort(boxes[:, 2] - boxes[:, 0])
    x0, y0, x1, y1 = boxes[order].unbind(1)
    widths = (x1 - x0).tolist()
    if widths[0] == 0:  # the box of an empty mask is (0, 0, 0, 0)
        raise ValueError("masked_crops got an empty mask; drop empty masks first")
    image, masks = image.contiguous(), masks.contiguous()
    height, width = masks.shape[1:]
    # The row pass reads runs of pixels as long as the chunk's widest box, from the box's left
    # edge, or further left where the run would cross the image's right edge.
    runs = [widths[min(start + chunk, count) - 1] for start in range(0, count, chunk)]
    run_lengths = torch.tensor(runs, device=boxes.device).repeat_interleave(chunk)[:count]
    left = torch.minimum(x0, width - run_lengths)
    row_index, row_weights = _cubic_taps(y1 - y0, size[0])
    col_index, col_weights = _cubic_taps(x1 - x0, size[1])
    row_weights, col_weights = row_weights.to(image.dtype), col_weights.to(image.dtype)
    first_pixels = (row_index + y0[:, None]) * width + left[:, None]  # (4, N, S_h)
    channels = height * width * torch.arange(3, device=boxes.device)[:, None]
    starts = (first_pixels[:, :, None, :] + channels).contiguous()  # (4, N, 3, S_h)
    mask_starts = first_pixels + height * width * order[:, None]
    col_index += (x0 - left)[:, None]
    out = image.new_empty((count, 3, *size))
    for start, run in zip(range(0, count, chunk), runs, strict=True):
        part = slice(start, start + chunk)
        image_runs = image.reshape(-1).unfold(0, run, 1)
        mask_runs = masks.reshape(-1).unfold(0, run, 1)
        crops = _resize_rows(
            image_runs, mask_runs, starts[:, part], mask_starts[:, part], row_weights[:, part]
        )
        crops = _resize_cols(crops, col_index[:, part], col_weights[:, part])
        out.index_copy_(0, order[part], crops)
    return out
