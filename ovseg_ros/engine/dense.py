"""Dense mode: one CLIP image-tower forward per frame instead of one per mask.

The whole frame goes through the ViT once, resized so that its short side spans a fixed number of
patches (positional embeddings resized to that grid). Each mask gets its own copy of the class
token, which runs through the tower's last few blocks attending only to itself and to the patches
the mask covers, each patch weighted by the fraction of it inside the mask (mask-restricted
attention of the kind MaskCLIP and SAN use, training-free). The patch tokens are computed once per
frame and never see the masks. Everything else in those blocks, the final norm and the projection
are CLIP's own, so each mask gets an embedding of the kind CLIP gives a crop, at the cost of one
frame forward plus one attention row per mask and masked block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ovseg_ros.engine.clip_model import ClipModel
from ovseg_ros.engine.crops import normalize_image


@dataclass
class DenseConfig:
    """short_side_patches: the frame is resized so that its short side spans this many patches
    (the long side keeps the aspect ratio): 24 is 384 px for a ViT-B/16, 192 px for the tiny
    CLIP's 8-px patches.

    masked_blocks: the mask's class token runs through this many of the tower's last blocks (all of
    them if it has fewer): 1 restricts the last block only; more lets the class token gather from
    the mask's patches earlier, as CLIP's class token does in a crop. At least 1.
    """

    short_side_patches: int = 24
    masked_blocks: int = 4

    def __post_init__(self) -> None:
        if self.short_side_patches < 1 or self.masked_blocks < 1:
            raise ValueError(
                f"short_side_patches and masked_blocks must be at least 1, got "
                f"{self.short_side_patches} and {self.masked_blocks}"
            )


def resized_positional_embedding(visual: torch.nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """(1 + gh * gw, W) positional embeddings for a gh x gw patch grid: the class token's as
    trained, the patches' bicubic-resized from the trained grid."""
    embedding = visual.positional_embedding
    trained_h, trained_w = visual.grid_size
    patches = embedding[1:].reshape(1, trained_h, trained_w, -1).permute(0, 3, 1, 2)
    if (trained_h, trained_w) != grid:
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([embedding[:1], patches[0].flatten(1).T], dim=0)


SHARE_CHUNK = 8
"""Masks converted to float and pooled at a time in patch_shares: a block that stays in cache
(3.5x faster than all masks at once for 100 masks of 640x480 on 2 CPU cores)."""


def patch_shares(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """masks: (N, H, W) bool or float in [0, 1] -> (N, gh, gw) float32, each cell of the
    gh x gw patch grid's share inside each mask."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *grid), dtype=torch.float32)
    return torch.cat(
        [
            F.adaptive_avg_pool2d(masks[start : start + SHARE_CHUNK].float()[None], grid)[0]
            for start in range(0, masks.shape[0], SHARE_CHUNK)
        ]
    )


def check_dense_support(clip: ClipModel) -> None:
    """Raises ValueError unless the image tower is an open_clip ViT with class-token pooling."""
    visual = clip.model.visual
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if (
        blocks is None
        or getattr(visual, "attn_pool", None) is not None
        or getattr(visual, "pool_type", "tok") != "tok"
        or not getattr(visual.transformer, "batch_first", True)
    ):
        raise ValueError(
            f"dense mode needs a CLIP ViT with class-token pooling; {clip.name} is not"
        )


def mask_attention_class_tokens(
    block: torch.nn.Module,
    tokens: torch.Tensor,
    class_tokens: torch.Tensor,
    patch_weights: torch.Tensor,
) -> torch.Tensor:
    """The class tokens' outputs of a transformer block, one class token per mask.

    block: an open_clip ResidualAttentionBlock; tokens: (1, 1 + P, W) the frame's tokens entering
    it (class token first, unused here); class_tokens: (N, W) mask n's class token entering it;
    patch_weights: (N, P) in [0, 1], each patch's share inside mask n.
    Returns (N, W): each class token plus its attention over {itself} and mask n's patches (a
    patch's attention weight scaled by its share), then the block's MLP.
    """
    attention: torch.nn.MultiheadAttention = block.attn
    heads = attention.num_heads
    count, width = class_tokens.shape
    head_width = width // heads
    projection = (attention.in_proj_weight, attention.in_proj_bias)
    _, patch_k, patch_v = F.linear(block.ln_1(tokens[0, 1:]), *projection).chunk(3, -1)
    q, k, v = F.linear(block.ln_1(class_tokens), *projection).chunk(3, -1)
    q, k, v = (t.reshape(count, heads, head_width) for t in (q, k, v))
    patch_k = patch_k.reshape(-1, heads, head_width).transpose(0, 1)  # (heads, P, head_width)
    patch_v = patch_v.reshape(-1, heads, head_width).transpose(0, 1)
    bias = patch_weights.clamp(min=1e-12).log().to(q.dtype)  # -27.6 ~ excluded
    bias = bias.masked_fill(patch_weights == 0, float("-inf"))
    scale = head_width**-0.5
    own_logits = (q * k).sum(-1, keepdim=True) * scale  # (N, heads, 1)
    patch_logits = torch.einsum("nhd,hpd->nhp", q, patch_k) * scale + bias[:, None, :]
    weights = torch.softmax(torch.cat([own_logits, patch_logits], -1), -1)
    attended = weights[..., :1] * v + torch.einsum("nhp,hpd->nhd", weights[..., 1:], patch_v)
    x = class_tokens + block.ls_1(attention.out_proj(attended.reshape(count, width)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class DenseFeatureExtractor:
    """Per-mask CLIP embeddings from one forward of the whole frame."""

    def __init__(self, clip: ClipModel, config: DenseConfig | None = None) -> None:
        self.clip = clip
        self.config = config or DenseConfig()

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """(gh, gw) patch grid an image of height x width pixels is resized to: min(gh, gw) =
        short_side_patches, the aspect ratio kept."""
        scale = self.config.short_side_patches / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def frame_tokens(
        self, image: np.ndarray | torch.Tensor
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """image: (H, W, 3) uint8 RGB (array, or tensor on any device) -> (tokens entering the
        first masked block: (1, 1 + gh * gw, W), (gh, gw) the patch grid, min(gh, gw) =
        short_side_patches)."""
        grid = self.patch_grid(*image.shape[:2])
        return self.batch_frame_tokens([image], grid), grid

    def batch_frame_tokens(
        self, images: list[np.ndarray | torch.Tensor], grid: tuple[int, int]
    ) -> torch.Tensor:
        """B images (H_i, W_i, 3) uint8 RGB, each resized to the patch grid `grid` (gh, gw) ->
        (B, 1 + gh * gw, W) tokens entering the first masked block, in one forward."""
        check_dense_support(self.clip)
        visual = self.clip.model.visual
        patch_h, patch_w = visual.patch_size
        size = (grid[0] * patch_h, grid[1] * patch_w)
        frames = torch.stack(
            [
                F.interpolate(
                    normalize_image(image, self.clip.mean, self.clip.std, self.clip.device)[None],
                    size,
                    mode="bicubic",
                    align_corners=False,
                )[0]
                for image in images
            ]
        ).to(self.clip.image_input_dtype)
        with self.clip.autocast():
            x = visual.conv1(frames).flatten(2).transpose(1, 2)
            cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)
            x = x + resized_positional_embedding(visual, grid).to(x.dtype)
            x = visual.ln_pre(x)
            for block in visual.transformer.resblocks[: self.first_masked_block()]:
                x = block(x)
        return x

    def first_masked_block(self) -> int:
        """Index of the first block the masks' class tokens run through; the blocks before it
        run once per frame for every token."""
        return max(0, len(self.clip.model.visual.transformer.resblocks) - self.config.masked_blocks)

    def share_embeddings(self, tokens: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
        """tokens: (1, 1 + P, W) from frame_tokens; shares: (N, gh, gw) from patch_shares ->
        (N, D) float32 unit-norm embeddings: the masked blocks (one class token per mask, the
        frame's patch tokens through every masked block but the last), the final norm and the
        projection. Differentiable."""
        return self.batch_share_embeddings(tokens, [shares])[0]

    def batch_share_embeddings(
        self, tokens: torch.Tensor, shares: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """share_embeddings of B frames at once: tokens (B, 1 + P, W) from batch_frame_tokens,
        shares[b] (N_b, gh, gw) -> B tensors (N_b, D); the frames' tokens run through the masked
        blocks in one forward per block."""
        visual = self.clip.model.visual
        masked = visual.transformer.resblocks[self.first_masked_block() :]
        weights = [share.flatten(1).to(tokens.device) for share in shares]
        with self.clip.autocast():
            class_tokens = [tokens[b, :1].expand(w.shape[0], -1) for b, w in enumerate(weights)]
            for index, block in enumerate(masked):
                class_tokens = [
                    mask_attention_class_tokens(block, tokens[b : b + 1], own, w)
                    for b, (own, w) in enumerate(zip(class_tokens, weights, strict=True))
                ]
                if index < len(masked) - 1:
                    tokens = block(tokens)
            embeddings = [visual.ln_post(own) @ visual.proj for own in class_tokens]
        return [F.normalize(e.float(), dim=-1) for e in embeddings]

    @torch.inference_mode()
    def mask_embeddings(
        self, image: np.ndarray | torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        """image: (H, W, 3) uint8 RGB (array or tensor); masks: (N, H, W) bool or float in
        [0, 1], none empty -> (N, D) float32 unit-norm embeddings."""
        return self.batch_mask_embeddings([image], [masks])[0]

    @torch.inference_mode()
    def batch_mask_embeddings(
        self, images: list[np.ndarray | torch.Tensor], masks: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """mask_embeddings of several frames (e.g. several cameras' at once): images whose patch
        grids agree share one forward through the tower. Returns one (N_i, D) tensor per image."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(self.patch_grid(*image.shape[:2]), []).append(index)
        embeddings: list[torch.Tensor] = [torch.empty(0)] * len(images)
        for grid, members in groups.items():
            tokens = self.batch_frame_tokens([images[i] for i in members], grid)
            shares = [patch_shares(masks[i].to(tokens.device), grid) for i in members]
            for index, result in zip(
                members, self.batch_share_embeddings(tokens, shares), strict=True
            ):
                embeddings[index] = result
        return embeddings
