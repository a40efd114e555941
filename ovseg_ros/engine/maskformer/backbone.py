"""ResNet backbones with detectron2's module layout: the basic 7x7 stem or the DeepLab deep stem.

Module names follow detectron2 (`stem.conv1`, `res2.0.conv1`, `res2.0.conv1.norm`,
`res2.0.shortcut`, ...), so imported checkpoints map onto this module name for name.
"R101c" is the reference's proposal backbone: ResNet-101 with the deep stem (three 3x3 convs,
64-64-128 channels), the stride in the 3x3 conv, and res5 blocks dilated 1, 2, 4.

Output: a dict of feature maps, "res2" to "res5", at strides 4, 8, 16, 32 of the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

STAGE_NAMES = ("res2", "res3", "res4", "res5")
STAGE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
NORMS = ("frozen_bn", "bn")
BLOCKS = ("bottleneck", "basic")
STEMS = ("basic", "deeplab")


@dataclass(frozen=True)
class ResNetConfig:
    """Shape of a ResNet backbone.

    blocks_per_stage: residual blocks in res2..res5.
    block: "bottleneck" (1x1-3x3-1x1) or "basic" (3x3-3x3).
    stem: "basic" (7x7 conv, stride 2) or "deeplab" (3x3 convs to stem_channels / 2, stem_channels
    / 2, stem_channels; the first stride 2); both end in a 3x3 stride-2 max pool.
    res2_channels: output channels of res2, doubled in each later stage.
    bottleneck_channels: inner channels of res2's bottleneck blocks, doubled in each later stage.
    stride_in_1x1: downsample in the first 1x1 conv (MSRA) instead of the 3x3 (torchvision).
    res5_dilation, res5_multi_grid: res5's 3x3 convs use dilation res5_dilation * grid[i] in
    block i; res5_dilation > 1 also drops res5's stride (output stride 16).
    norm: "frozen_bn" (fixed statistics and affine, as imported checkpoints use) or "bn".
    """

    blocks_per_stage: tuple[int, int, int, int] = (3, 4, 6, 3)
    block: str = "bottleneck"
    stem: str = "basic"
    stem_channels: int = 64
    res2_channels: int = 256
    bottleneck_channels: int = 64
    stride_in_1x1: bool = False
    res5_dilation: int = 1
    res5_multi_grid: tuple[int, ...] = (1, 1, 1)
    norm: str = "frozen_bn"

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if len(self.res5_multi_grid) != self.blocks_per_stage[3]:
            raise ValueError(
                f"res5_multi_grid {self.res5_multi_grid} needs one entry per res5 block "
                f"({self.blocks_per_stage[3]})"
            )

    @property
    def out_channels(self) -> dict[str, int]:
        """Channels of each output feature map."""
        return {name: self.res2_channels * 2**i for i, name in enumerate(STAGE_NAMES)}


RESNET_CONFIGS = {
    "R50": ResNetConfig(blocks_per_stage=(3, 4, 6, 3)),
    "R101": ResNetConfig(blocks_per_stage=(3, 4, 23, 3)),
    "R101c": ResNetConfig(
        blocks_per_stage=(3, 4, 23, 3),
        stem="deeplab",
        stem_channels=128,
        res5_multi_grid=(1, 2, 4),
    ),
}
"""The reference's backbones: detectron2's R50 / R101 and the deep-stem R101c (R-103.pkl)."""


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (buffers, never trained).

    y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def make_norm(kind: str, channels: int) -> nn.Module:
    """A normalisation layer by name: "frozen_bn", "bn" or "gn" (GroupNorm, 32 groups or fewer)."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(min(32, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; known: frozen_bn, bn, gn")


class ConvNorm(nn.Conv2d):
    """A Conv2d followed by an optional norm held as `.norm` (detectron2's Conv2d layout:
    parameters `weight`, `bias`, `norm.*`); no activation."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return self.norm(x) if self.norm is not None else x


def _conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    norm: str,
    stride: int = 1,
    dilation: int = 1,
) -> ConvNorm:
    """A bias-free conv with "same" padding and a norm."""
    return ConvNorm(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=dilation * (kernel_size // 2),
        dilation=dilation,
        bias=False,
        norm=make_norm(norm, out_channels),
    )


class BasicStem(nn.Module):
    """7x7 stride-2 conv, ReLU, 3x3 stride-2 max pool: (B, 3, H, W) -> (B, C, H/4, W/4)."""

    def __init__(self, out_channels: int, norm: str):
        super().__init__()
        self.conv1 = _conv(3, out_channels, 7, norm, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DeepLabStem(nn.Module):
    """Three 3x3 convs (the first stride 2) with ReLUs, then a 3x3 stride-2 max pool:
    (B, 3, H, W) -> (B, C, H/4, W/4); channels C/2, C/2, C."""

    def __init__(self, out_channels: int, norm: str):
        super().__init__()
        half = out_channels // 2
        self.conv1 = _conv(3, half, 3, norm, stride=2)
        self.conv2 = _conv(half, half, 3, norm)
        self.conv3 = _conv(half, out_channels, 3, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 (reduce), 3x3 (stride, dilation), 1x1 (expand), plus the shortcut, then ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        stride: int,
        dilation: int,
        stride_in_1x1: bool,
        norm: str,
    ):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.shortcut = (
            _conv(in_channels, out_channels, 1, norm, stride=stride)
            if in_channels != out_channels or stride != 1
            else None
        )
        self.conv1 = _conv(in_channels, bottleneck_channels, 1, norm, stride=stride_1x1)
        self.conv2 = _conv(
            bottleneck_channels, bottleneck_channels, 3, norm, stride=stride_3x3, dilation=dilation
        )
        self.conv3 = _conv(bottleneck_channels, out_channels, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + shortcut)


class BasicBlock(nn.Module):
    """3x3 (stride, dilation), 3x3, plus the shortcut, then ReLU (ResNet-18/34 style)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int, norm: str):
        super().__init__()
        self.shortcut = (
            _conv(in_channels, out_channels, 1, norm, stride=stride)
            if in_channels != out_channels or stride != 1
            else None
        )
        self.conv1 = _conv(in_channels, out_channels, 3, norm, stride=stride, dilation=dilation)
        self.conv2 = _conv(out_channels, out_channels, 3, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """A ResNet returning res2..res5: images (B, 3, H, W), normalised -> dict of
    (B, out_channels[name], H / stride, W / stride) feature maps."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        stem_class = DeepLabStem if config.stem == "deeplab" else BasicStem
        self.stem = stem_class(config.stem_channels, config.norm)
        in_channels = config.stem_channels
        out_channels = config.res2_channels
        bottleneck = config.bottleneck_channels
        for index, name in enumerate(STAGE_NAMES):
            stride = 1 if index == 0 else 2
            dilations = [1] * config.blocks_per_stage[index]
            if name == "res5":
                stride = 1 if config.res5_dilation > 1 else 2
                dilations = [config.res5_dilation * grid for grid in config.res5_multi_grid]
            blocks = []
            for block_index, dilation in enumerate(dilations):
                block_stride = stride if block_index == 0 else 1
                if config.block == "bottleneck":
                    block = BottleneckBlock(
                        in_channels,
                        out_channels,
                        bottleneck,
                        block_stride,
                        dilation,
                        config.stride_in_1x1,
                        config.norm,
                    )
                else:
                    block = BasicBlock(
                        in_channels, out_channels, block_stride, dilation, config.norm
                    )
                blocks.append(block)
                in_channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            out_channels *= 2
            bottleneck *= 2

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(images)
        features = {}
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
            features[name] = x
        return features
