"""MaskFormer's transformer decoder: learned queries attend to the res5 features and become
mask embeddings (dot product with the per-pixel mask features -> mask logits) and class
embeddings (in CLIP's text-embedding space).

As in MaskFormer (DETR decoder): no encoder layers; post-norm decoder layers (self-attention,
cross-attention with the 2D sine position encoding added to the keys and the query embedding added
to the queries, feed-forward), each followed by one shared LayerNorm whose output every layer
reports (deep supervision).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sine_position_encoding(
    height: int, width: int, channels: int, device: torch.device | None = None
) -> torch.Tensor:
    """2D sine position encoding of a height x width grid: (channels, height, width) float32.

    Row and column positions 1..n are scaled to (0, 2 pi]; channels / 2 channels each encode the
    row (first half) and the column (second half) as sin, cos, sin, cos, ... of position / 10000
    ** (2 * (i // 2) / (channels / 2)).
    """
    if channels % 4:
        raise ValueError(f"channels must be a multiple of 4, got {channels}")
    half = channels // 2
    eps = 1e-6
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    rows = rows / (height + eps) * 2 * math.pi
    cols = cols / (width + eps) * 2 * math.pi
    index = torch.arange(half, dtype=torch.float32, device=device)
    frequencies = 10000 ** (2 * torch.div(index, 2, rounding_mode="floor") / half)

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions[:, None] / frequencies
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    row_code = encode(rows).T[:, :, None].expand(half, height, width)
    col_code = encode(cols).T[:, None, :].expand(half, height, width)
    return torch.cat((row_code, col_code), dim=0)


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last); module list `layers`."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


class DecoderLayer(nn.Module):
    """One post-norm DETR decoder layer: queries (B, Q, D), memory (B, S, D) -> (B, Q, D)."""

    def __init__(self, dim: int, heads: int, feedforward_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, feedforward_dim)
        self.linear2 = nn.Linear(feedforward_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        target: torch.Tensor,
        memory: torch.Tensor,
        memory_position: torch.Tensor,
        query_position: torch.Tensor,
    ) -> torch.Tensor:
        q = k = target + query_position
        target = self.norm1(target + self.dropout(self.self_attn(q, k, target)[0]))
        attended = self.multihead_attn(target + query_position, memory + memory_position, memory)
        target = self.norm2(target + self.dropout(attended[0]))
        hidden = self.dropout(F.relu(self.linear1(target)))
        return self.norm3(target + self.dropout(self.linear2(hidden)))


class TransformerDecoder(nn.Module):
    """Queries -> per-layer mask embeddings and class embeddings.

    forward(features (B, C, h, w) res5, mask_features (B, M, H, W)) returns, for each of the
    num_layers layers (last = final output):
      mask_logits: (L, B, Q, H, W) float, pre-sigmoid.
      class_embeddings: (L, B, Q, embedding_dim) float, not normalised.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        num_layers: int = 6,
        heads: int = 8,
        feedforward_dim: int = 2048,
        dropout: float = 0.1,
        mask_dim: int = 256,
        embedding_dim: int = 512,
        embed_hidden_dim: int = 1024,
        embed_layers: int = 2,
    ):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.input_proj = (
            nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Identity()
        )
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_dim, heads, feedforward_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.class_embed = MLP(hidden_dim, embed_hidden_dim, embedding_dim, embed_layers)

    def forward(
        self, features: torch.Tensor, mask_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, height, width = features.shape
        position = sine_position_encoding(height, width, self.hidden_dim, features.device)
        memory_position = position.flatten(1).T[None]
        memory = self.input_proj(features).flatten(2).transpose(1, 2)
        query_position = self.query_embed.weight[None].expand(batch, -1, -1)
        target = torch.zeros_like(query_position)
        outputs = []
        for layer in self.layers:
            target = layer(target, memory, memory_position, query_position)
            outputs.append(self.norm(target))
        hidden = torch.stack(outputs)
        mask_logits = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(hidden), mask_features)
        return mask_logits, self.class_embed(hidden)
