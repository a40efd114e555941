"""MaskFormer with its class head in CLIP's text-embedding space, as the paper's proposal network.

images -> ResNet -> FPN pixel decoder (mask features, stride 4) -> transformer decoder over res5
-> per query: a mask (sigmoid of mask embedding . mask features) and an embedding compared, by
cosine similarity times 100, with the text embeddings of the class names plus a learned
"non-object" embedding (the extra, last class).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ovseg_ros.engine.maskformer.backbone import RESNET_CONFIGS, ResNet, ResNetConfig
from ovseg_ros.engine.maskformer.pixel_decoder import FPNPixelDecoder
from ovseg_ros.engine.maskformer.transformer_decoder import TransformerDecoder

LOGIT_SCALE = 100.0
"""Temperature of the text-space classifier: logits = 100 * cosine similarity (as CLIP)."""

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class MaskFormerConfig:
    """Everything that fixes the network's shape and input normalisation.

    pixel_mean, pixel_std: per-channel RGB statistics in [0, 255] units.
    size_divisibility: inputs are zero-padded (after normalisation) to a multiple of this.
    The defaults are the reference's (R101c, 256-d decoder, 100 queries, 6 layers, 512-d text
    space of CLIP ViT-B/16).
    """

    backbone: ResNetConfig = field(default_factory=lambda: RESNET_CONFIGS["R101c"])
    conv_dim: int = 256
    mask_dim: int = 256
    pixel_decoder_norm: str = "gn"
    hidden_dim: int = 256
    num_queries: int = 100
    num_layers: int = 6
    heads: int = 8
    feedforward_dim: int = 2048
    dropout: float = 0.1
    embedding_dim: int = 512
    embed_hidden_dim: int = 1024
    embed_layers: int = 2
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    size_divisibility: int = 32

    def to_dict(self) -> dict:
        """JSON-ready dict (inverse of from_dict)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MaskFormerConfig:
        """Config from to_dict's output; unknown keys are an error."""
        values = dict(values)
        backbone = dict(values.pop("backbone"))
        for key in ("blocks_per_stage", "res5_multi_grid"):
            backbone[key] = tuple(backbone[key])
        for key in ("pixel_mean", "pixel_std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(backbone=ResNetConfig(**backbone), **values)


@dataclass
class MaskFormerOutput:
    """Raw network outputs for a batch, one entry per decoder layer (last = final).

    mask_logits: (L, B, Q, H/4, W/4) float, pre-sigmoid, at the padded input's stride-4 grid.
    query_embeddings: (L, B, Q, D) float, in the text-embedding space, not normalised.
    """

    mask_logits: torch.Tensor
    query_embeddings: torch.Tensor


@dataclass
class MaskFormerPrediction:
    """The network's proposals for one image.

    masks: (Q, H, W) float32 soft masks in [0, 1] at the image's size.
    embeddings: (Q, D) float32 query embeddings, unit norm.
    """

    masks: torch.Tensor
    embeddings: torch.Tensor


class MaskFormer(nn.Module):
    """The proposal network. `non_object_embedding`: (1, D), the learned "no class" embedding."""

    def __init__(self, config: MaskFormerConfig):
        super().__init__()
        self.config = config
        self.backbone = ResNet(config.backbone)
        channels = config.backbone.out_channels
        self.pixel_decoder = FPNPixelDecoder(
            channels, config.conv_dim, config.mask_dim, config.pixel_decoder_norm
        )
        self.transformer_decoder = TransformerDecoder(
            in_channels=channels["res5"],
            hidden_dim=config.hidden_dim,
            num_queries=config.num_queries,
            num_layers=config.num_layers,
            heads=config.heads,
            feedforward_dim=config.feedforward_dim,
            dropout=config.dropout,
            mask_dim=config.mask_dim,
            embedding_dim=config.embedding_dim,
            embed_hidden_dim=config.embed_hidden_dim,
            embed_layers=config.embed_layers,
        )
        self.non_object_embedding = nn.Parameter(
            torch.randn(1, config.embedding_dim) * config.embedding_dim**-0.5
        )

    def forward(self, images: torch.Tensor) -> MaskFormerOutput:
        """images: (B, 3, H, W) float, normalised (see normalize), H and W multiples of
        config.size_divisibility."""
        features = self.backbone(images)
        mask_features = self.pixel_decoder(features)
        mask_logits, embeddings = self.transformer_decoder(features["res5"], mask_features)
        return MaskFormerOutput(mask_logits=mask_logits, query_embeddings=embeddings)

    def class_logits(
        self, query_embeddings: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """query_embeddings: (..., Q, D); text_embeddings: (C, D) unit norm -> (..., Q, C + 1)
        logits, 100 * cosine similarity; the last column is the non-object class."""
        classes = torch.cat([text_embeddings, F.normalize(self.non_object_embedding, dim=-1)])
        return LOGIT_SCALE * F.normalize(query_embeddings, dim=-1) @ classes.T

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) RGB in [0, 255] -> (B, 3, H', W') normalised and zero-padded at
        the bottom and right to multiples of size_divisibility."""
        mean = images.new_tensor(self.config.pixel_mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.config.pixel_std).view(1, 3, 1, 1)
        images = (images - mean) / std
        divisor = self.config.size_divisibility
        height, width = images.shape[-2:]
        pad_h, pad_w = (-height) % divisor, (-width) % divisor
        return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images

    @torch.inference_mode()
    def propose(self, image: np.ndarray) -> MaskFormerPrediction:
        """image: (H, W, 3) uint8 RGB -> MaskFormerPrediction at (H, W), as the reference's
        inference: masks upsampled (bilinear) to the padded input size, cropped to the image,
        then sigmoid."""
        device = self.non_object_embedding.device
        height, width = image.shape[:2]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device)
        tensor = tensor.permute(2, 0, 1)[None].float()
        padded = self.normalize(tensor)
        output = self(padded)
        logits = F.interpolate(
            output.mask_logits[-1], size=padded.shape[-2:], mode="bilinear", align_corners=False
        )
        masks = logits[0, :, :height, :width].sigmoid()
        embeddings = F.normalize(output.query_embeddings[-1, 0], dim=-1)
        return MaskFormerPrediction(masks=masks.float(), embeddings=embeddings.float())
