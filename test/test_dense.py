"""Dense mode: the mask-restricted class tokens reproduce CLIP where they should."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_model import TINY_CHECKPOINT, TINY_MODEL

from ovseg_ros.engine.clip_model import load_clip
from ovseg_ros.engine.crops import normalize_image
from ovseg_ros.engine.dense import (
    SHARE_CHUNK,
    DenseConfig,
    DenseFeatureExtractor,
    mask_attention_class_tokens,
    patch_shares,
    resized_positional_embedding,
)


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip(TINY_MODEL, checkpoint=TINY_CHECKPOINT, device="cpu", precision="fp32")


def test_full_mask_attention_is_the_blocks_own_class_token(tiny_clip):
    """Every patch fully inside the mask: the restricted attention is the ordinary one."""
    torch.manual_seed(0)
    block = tiny_clip.model.visual.transformer.resblocks[-1]
    width = tiny_clip.model.visual.conv1.out_channels
    tokens = torch.randn(1, 1 + 16, width)
    with torch.inference_mode():
        expected = block(tokens)[0, 0]
        got = mask_attention_class_tokens(
            block, tokens, tokens[0, :1].expand(3, -1), torch.ones(3, 16)
        )
    for row in got:
        torch.testing.assert_close(row, expected, rtol=1e-5, atol=1e-5)


def test_excluded_patches_do_not_matter(tiny_clip):
    torch.manual_seed(1)
    block = tiny_clip.model.visual.transformer.resblocks[-1]
    width = tiny_clip.model.visual.conv1.out_channels
    tokens = torch.randn(1, 1 + 8, width)
    weights = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    changed = tokens.clone()
    changed[0, 1 + torch.tensor([2, 3, 5, 6, 7])] = torch.randn(5, width)
    class_token = torch.randn(1, width)
    with torch.inference_mode():
        a = mask_attention_class_tokens(block, tokens, class_token, weights)
        b = mask_attention_class_tokens(block, changed, class_token, weights)
        kept = tokens[:, [0, 1, 2, 5]]
        only_kept = mask_attention_class_tokens(block, kept, class_token, torch.ones(1, 3))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, only_kept, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("masked_blocks", [1, 2, 4, 9])
def test_whole_image_mask_at_native_size_is_clips_image_embedding(tiny_clip, masked_blocks):
    image = np.random.default_rng(0).integers(0, 255, (*tiny_clip.image_size, 3), dtype=np.uint8)
    grid = tiny_clip.model.visual.grid_size[0]
    extractor = DenseFeatureExtractor(
        tiny_clip, DenseConfig(short_side_patches=grid, masked_blocks=masked_blocks)
    )
    dense = extractor.mask_embeddings(image, torch.ones(1, *tiny_clip.image_size))
    normalized = normalize_image(image, tiny_clip.mean, tiny_clip.std)
    expected = tiny_clip.encode_images(normalized[None])
    torch.testing.assert_close(dense, expected, rtol=1e-4, atol=1e-5)


def test_each_masks_embedding_is_independent_of_the_other_masks(tiny_clip):
    image = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    masks = torch.zeros(3, 96, 128, dtype=torch.bool)
    masks[0, 10:50, 20:70] = True
    masks[1, 40:, :60] = True
    masks[2, :, 100:] = True
    extractor = DenseFeatureExtractor(tiny_clip)
    together = extractor.mask_embeddings(image, masks)
    for index in range(3):
        alone = extractor.mask_embeddings(image, masks[index : index + 1])
        torch.testing.assert_close(together[index : index + 1], alone, rtol=1e-5, atol=1e-6)


def test_dense_config_refuses_fewer_than_one_patch_or_masked_block():
    with pytest.raises(ValueError, match="at least 1"):
        DenseConfig(short_side_patches=0)
    with pytest.raises(ValueError, match="at least 1"):
        DenseConfig(masked_blocks=0)


def test_positional_embedding_kept_at_trained_grid_and_resized_otherwise(tiny_clip):
    visual = tiny_clip.model.visual
    same = resized_positional_embedding(visual, tuple(visual.grid_size))
    torch.testing.assert_close(same, visual.positional_embedding)
    bigger = resized_positional_embedding(visual, (12, 16))
    assert bigger.shape == (1 + 12 * 16, visual.positional_embedding.shape[1])
    torch.testing.assert_close(bigger[0], visual.positional_embedding[0])


def test_dense_mode_gives_one_unit_embedding_per_mask(tiny_clip):
    image = np.random.default_rng(2).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    masks = torch.zeros(3, 240, 320, dtype=torch.bool)
    masks[0, :100, :100] = True
    masks[1, 100:, 100:] = True
    masks[2, 5, 5] = True  # one pixel: still a (small) share of one patch
    embeddings = DenseFeatureExtractor(tiny_clip).mask_embeddings(image, masks)
    assert embeddings.shape == (3, tiny_clip.embed_dim)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    assert not torch.allclose(embeddings[0], embeddings[1])


def test_frame_short_side_spans_the_configured_patches_at_any_resolution(tiny_clip):
    extractor = DenseFeatureExtractor(tiny_clip, DenseConfig(short_side_patches=24))
    for height, width in ((240, 320), (480, 640), (320, 240)):
        image = np.zeros((height, width, 3), np.uint8)
        tokens, grid = extractor.frame_tokens(image)
        assert grid == ((24, 32) if width > height else (32, 24))
        assert tokens.shape == (1, 1 + 24 * 32, tiny_clip.model.visual.conv1.out_channels)


def test_patch_shares_are_each_cells_fraction_inside_the_mask():
    masks = torch.zeros(1, 40, 60, dtype=torch.bool)  # a 2 x 3 grid of 20 x 20 cells
    masks[0, :, :30] = True  # column 0 whole, half of column 1
    masks[0, :10, 30:40] = True  # another quarter of cell (0, 1)
    shares = patch_shares(masks, (2, 3))
    torch.testing.assert_close(shares, torch.tensor([[[1.0, 0.75, 0.0], [1.0, 0.5, 0.0]]]))


def test_patch_shares_of_many_masks_are_pooled_block_by_block_like_one_at_a_time():
    masks = (
        torch.rand(2 * SHARE_CHUNK + 3, 30, 41, generator=torch.Generator().manual_seed(0)) > 0.5
    )
    shares = patch_shares(masks, (4, 5))
    assert shares.shape == (2 * SHARE_CHUNK + 3, 4, 5)
    expected = torch.nn.functional.adaptive_avg_pool2d(masks.float(), (4, 5))
    torch.testing.assert_close(shares, expected, rtol=0, atol=0)
    assert patch_shares(masks[:0], (4, 5)).shape == (0, 4, 5)
