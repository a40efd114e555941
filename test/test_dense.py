"""Dense CLIP features: window layout, the modified last block, mask pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_model import TINY_CHECKPOINT, TINY_MODEL

from ovseg_ros.engine.clip_model import load_clip
from ovseg_ros.engine.dense import (
    DenseConfig,
    DenseFeatureExtractor,
    patch_embeddings,
    self_self_attention,
    window_origins,
)


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip(TINY_MODEL, checkpoint=TINY_CHECKPOINT, device="cpu")


def test_window_origins_cover_the_length_with_the_last_flush():
    assert window_origins(100, 100, 50) == [0]
    assert window_origins(80, 100, 50) == [0]
    assert window_origins(250, 100, 50) == [0, 50, 100, 150]
    assert window_origins(260, 100, 50) == [0, 50, 100, 150, 160]


def test_self_self_block_with_uniform_attention_averages_values():
    """With q and k projections zero, both softmaxes are uniform (1/L each), so every token's
    output is out_proj(2 * mean of the value vectors), worked out here without the module."""
    torch.manual_seed(0)
    width, length = 8, 5
    block = torch.nn.Module()
    block.ln_1 = torch.nn.Identity()
    block.attn = torch.nn.MultiheadAttention(width, num_heads=2, batch_first=True)
    with torch.no_grad():
        block.attn.in_proj_weight[: 2 * width] = 0
        block.attn.in_proj_bias[: 2 * width] = 0
    x = torch.randn(1, length, width)
    w_v = block.attn.in_proj_weight[2 * width :]
    b_v = block.attn.in_proj_bias[2 * width :]
    values = x[0] @ w_v.T + b_v
    expected = 2 * values.mean(dim=0) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    out = self_self_attention(block, x)
    assert out.shape == (1, length, width)
    torch.testing.assert_close(out[0], expected.expand(length, width), rtol=1e-5, atol=1e-5)


def test_patch_embeddings_shape_and_norm(tiny_clip):
    size = tiny_clip.image_size
    windows = torch.randn(2, 3, *size)
    features = patch_embeddings(tiny_clip, windows)
    patch = tiny_clip.model.visual.patch_size
    assert features.shape == (2, tiny_clip.embed_dim, size[0] // patch[0], size[1] // patch[1])
    torch.testing.assert_close(
        features.norm(dim=1), torch.ones(features.shape[0], *features.shape[2:])
    )


def test_mask_pooling_is_the_mask_weighted_mean(tiny_clip):
    extractor = DenseFeatureExtractor(tiny_clip, DenseConfig(short_side_scale=1.0))
    cell_h, cell_w = tiny_clip.model.visual.patch_size
    height = tiny_clip.image_size[0]
    width = 2 * tiny_clip.image_size[1]  # two windows wide at scale 1: no resize
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    features = extractor.frame_features(image)
    assert features.shape[1:] == (height // cell_h, width // cell_w)
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, :cell_h, :cell_w] = True  # exactly the top-left feature cell
    masks[1, :cell_h, : 2 * cell_w] = True  # the first two cells of the top row
    pooled = extractor.mask_embeddings(image, masks)
    torch.testing.assert_close(pooled[0], features[:, 0, 0])
    torch.testing.assert_close(pooled[1], F.normalize(features[:, 0, :2].mean(dim=1), dim=0))
