"""Per-pixel colour and texture features in torch, for the training-free generator (hierarchy.py).

Everything runs on the device of the image tensor it is given, CPU or GPU, with the same ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.950456, 1.0, 1.088754)


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """image: (H, W, 3) uint8 sRGB -> (3, H, W) float32 CIELAB (D65): L in [0, 100], a and b
    about [-128, 127]."""
    rgb = image.permute(2, 0, 1).float() / 255.0
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_RGB_TO_XYZ, device=image.device)
    white = torch.tensor(_WHITE_D65, device=image.device)
    xyz = torch.einsum("ij,jhw->ihw", matrix, linear) / white[:, None, None]
    delta = 6.0 / 29.0
    f = torch.where(
        xyz > delta**3, xyz.clamp(min=1e-12) ** (1.0 / 3.0), xyz / (3 * delta**2) + 4 / 29
    )
    fx, fy, fz = f.unbind(0)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)])


def gaussian_blur(channels: torch.Tensor, sigma: float) -> torch.Tensor:
    """channels: (C, H, W) float -> the same, blurred with a Gaussian of `sigma` pixels (separable,
    reflected borders; the kernel is cut to the image where it is larger than the image)."""
    if sigma <= 0:
        return channels
    count, height, width = channels.shape
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=channels.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = channels[None]
    for axis, length in ((3, width), (2, height)):
        pad = min(radius, length - 1)
        taps = kernel[radius - pad : radius + pad + 1]
        taps = taps / taps.sum()
        shape = (count, 1, 1, 2 * pad + 1) if axis == 3 else (count, 1, 2 * pad + 1, 1)
        padding = (pad, pad, 0, 0) if axis == 3 else (0, 0, pad, pad)
        if pad > 0:
            out = F.pad(out, padding, mode="reflect")
        out = F.conv2d(out, taps.view(1, 1, *shape[2:]).expand(shape).contiguous(), groups=count)
    return out[0]


def edge_strength(lab: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """lab: (3, H, W) float -> (H, W): the colour gradient's magnitude, |d/dx| and |d/dy| of
    every channel smoothed at `sigma` pixels, in the colour's units per pixel."""
    smooth = gaussian_blur(lab, sigma)
    padded = F.pad(smooth[None], (1, 1, 1, 1), mode="replicate")[0]
    dx = (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]) * 0.5
    dy = (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]) * 0.5
    return (dx * dx + dy * dy).sum(0).sqrt()
