"""MaskFormer's pixel decoder: a light FPN that turns res2..res5 into per-pixel mask features.

Top-down, as MaskFormer's BasePixelDecoder: res5 -> 3x3 conv (`layer_4`); then for res4, res3,
res2: 1x1 lateral conv (`adapter_k`) plus the coarser map upsampled (nearest), 3x3 conv
(`layer_k`); finally a 3x3 conv (`mask_features`, with bias, no norm) at stride 4. Every conv but
`mask_features` is bias-free with GroupNorm; `layer_k` convs end in a ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovseg_ros.engine.maskformer.backbone import STAGE_NAMES, ConvNorm, make_norm


class FPNPixelDecoder(nn.Module):
    """features: dict res2..res5 of (B, C_k, H_k, W_k) -> mask features (B, mask_dim, H_2, W_2)
    at res2's resolution (stride 4)."""

    def __init__(
        self,
        in_channels: dict[str, int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "gn",
    ):
        super().__init__()
        self.in_features = list(STAGE_NAMES)
        last = len(self.in_features)
        for index, name in enumerate(self.in_features, start=1):
            channels = in_channels[name]
            if index < last:
                lateral = ConvNorm(
                    channels, conv_dim, 1, bias=False, norm=make_norm(norm, conv_dim)
                )
                self.add_module(f"adapter_{index}", lateral)
                channels = conv_dim
            output = ConvNorm(
                channels, conv_dim, 3, padding=1, bias=False, norm=make_norm(norm, conv_dim)
            )
            self.add_module(f"layer_{index}", output)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        last = len(self.in_features)
        y = F.relu(getattr(self, f"layer_{last}")(features[self.in_features[-1]]))
        for index in range(last - 1, 0, -1):
            lateral = getattr(self, f"adapter_{index}")(features[self.in_features[index - 1]])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = F.relu(getattr(self, f"layer_{index}")(y))
        return self.mask_features(y)
