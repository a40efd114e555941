"""Dense CLIP features: one image-tower forward per frame instead of one per mask.

A CLIP ViT's patch tokens are poorly localised because its last attention block mixes every patch
with the class token's view of the whole image. Training-free fixes (MaskCLIP, SCLIP, ClearCLIP,
NACLIP) change only that block; here its attention is replaced by self-self attention
(softmax(q q^T) + softmax(k k^T), so each patch attends to patches like itself) and the block's
residual and MLP are dropped, before the usual final norm and projection into the joint space.
The frame is covered by model-sized windows (no positional-embedding interpolation), all in one
batched forward; each proposal's embedding is the mask-weighted mean of the patch embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ovseg_ros.engine.clip_model import ClipModel
from ovseg_ros.engine.crops import normalize_image


@dataclass
class DenseConfig:
    """short_side_scale: the frame's short side is resized to this many model input sizes (>= 1);
    window_overlap: fraction of a window shared with its neighbour, in [0, 1)."""

    short_side_scale: float = 1.5
    window_overlap: float = 0.5


def window_origins(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of size `window` covering [0, length), the last one flush."""
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(count)})


def self_self_attention(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x: (B, L, W) tokens entering the last block -> (B, L, W) self-self attention output,
    without the block's residual and MLP."""
    attention: torch.nn.MultiheadAttention = block.attn
    heads = attention.num_heads
    batch, length, width = x.shape
    q, k, v = F.linear(block.ln_1(x), attention.in_proj_weight, attention.in_proj_bias).chunk(3, -1)
    q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    scale = (width // heads) ** -0.5
    weights = torch.softmax(q @ q.transpose(-2, -1) * scale, dim=-1) + torch.softmax(
        k @ k.transpose(-2, -1) * scale, dim=-1
    )
    out = (weights @ v).transpose(1, 2).reshape(batch, length, width)
    return attention.out_proj(out)


@torch.inference_mode()
def patch_embeddings(clip: ClipModel, windows: torch.Tensor) -> torch.Tensor:
    """windows: (B, 3, h, w) normalised, (h, w) = clip.image_size -> (B, D, h/p, w/p) float32,
    unit-norm joint-space embedding of each patch (p = patch size)."""
    visual = clip.model.visual
    if not hasattr(visual, "transformer") or getattr(visual, "attn_pool", None) is not None:
        raise ValueError(
            f"dense mode needs a CLIP ViT with class-token pooling; {clip.name} is not"
        )
    with clip.autocast():
        x = visual.conv1(windows.to(clip.device))
        grid_h, grid_w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)
        blocks = visual.transformer.resblocks
        if not getattr(visual.transformer, "batch_first", True):
            raise ValueError("dense mode expects a batch-first open_clip transformer")
        for block in blocks[:-1]:
            x = block(x)
        x = self_self_attention(blocks[-1], x)
        x = visual.ln_post(x[:, 1:]) @ visual.proj
    features = F.normalize(x.float(), dim=-1)
    return features.transpose(1, 2).reshape(x.shape[0], -1, grid_h, grid_w)


class DenseFeatureExtractor:
    """Per-frame dense CLIP embeddings and mask pooling."""

    def __init__(self, clip: ClipModel, config: DenseConfig | None = None) -> None:
        self.clip = clip
        self.config = config or DenseConfig()

    def frame_features(self, image: np.ndarray) -> torch.Tensor:
        """image: (H, W, 3) uint8 RGB -> (D, fh, fw) unit-norm patch embeddings of the whole
        frame, where fh / H ~ fw / W; overlapping windows are averaged."""
        height, width = image.shape[:2]
        win_h, win_w = self.clip.image_size
        patch_h, patch_w = self.clip.model.visual.patch_size
        scale = self.config.short_side_scale * min(win_h, win_w) / min(height, width)
        # Sizes and strides in whole patches, so every window lands on the frame's patch grid.
        out_h = max(win_h, round(height * scale / patch_h) * patch_h)
        out_w = max(win_w, round(width * scale / patch_w) * patch_w)
        frame = normalize_image(image, self.clip.mean, self.clip.std, self.clip.device)
        frame = F.interpolate(frame[None], (out_h, out_w), mode="bicubic", align_corners=False)[0]

        stride_h = max(1, round(win_h * (1 - self.config.window_overlap) / patch_h)) * patch_h
        stride_w = max(1, round(win_w * (1 - self.config.window_overlap) / patch_w)) * patch_w
        origins = [
            (y, x)
            for y in window_origins(out_h, win_h, stride_h)
            for x in window_origins(out_w, win_w, stride_w)
        ]
        windows = torch.stack([frame[:, y : y + win_h, x : x + win_w] for y, x in origins])
        features = patch_embeddings(self.clip, windows)
        grid_h, grid_w = out_h // patch_h, out_w // patch_w
        total = features.new_zeros((features.shape[1], grid_h, grid_w))
        count = features.new_zeros((1, grid_h, grid_w))
        for (y, x), window in zip(origins, features, strict=True):
            gy, gx = y // patch_h, x // patch_w
            h, w = min(window.shape[1], grid_h - gy), min(window.shape[2], grid_w - gx)
            total[:, gy : gy + h, gx : gx + w] += window[:, :h, :w]
            count[:, gy : gy + h, gx : gx + w] += 1
        return F.normalize(total / count.clamp(min=1), dim=0)

    def mask_embeddings(self, image: np.ndarray, masks: torch.Tensor) -> torch.Tensor:
        """image: (H, W, 3) uint8 RGB; masks: (N, H, W) bool or float in [0, 1]
        -> (N, D) unit-norm embeddings, each the mask-weighted mean of the frame's patch
        embeddings (masks area-averaged to the feature grid)."""
        features = self.frame_features(image)
        dim, grid_h, grid_w = features.shape
        weights = F.adaptive_avg_pool2d(masks.to(features.device).float()[None], (grid_h, grid_w))[
            0
        ]
        weights = weights.flatten(1)
        pooled = weights @ features.flatten(1).T / weights.sum(dim=1, keepdim=True).clamp(min=1e-6)
        return F.normalize(pooled, dim=-1)
