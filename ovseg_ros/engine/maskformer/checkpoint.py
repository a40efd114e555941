"""Loading and saving proposal-network weights.

Two formats:
- The project's own: a safetensors file whose metadata holds the MaskFormerConfig (JSON), the
  classes the network was trained on and the image size it was trained at; written by
  `save_maskformer`, read by `load_maskformer`.
- The reference implementation's (MendelXu/zsseg.baseline, detectron2 `model_final.pth`): a
  PyTorch file with the state dict under "model". Its keys are renamed with REFERENCE_KEY_MAP,
  derived from the reference's module names (ZeroShotMaskFormer: `backbone`, `sem_seg_head.
  pixel_decoder`, `sem_seg_head.predictor` with its DETR `transformer.decoder`, and the CLIP
  adapter's `non_object_embedding` and `prompt_learner`, and the learned prompts of a separate
  stage-2 adapter, `_region_clip_adapter.prompt_learner`). The frozen CLIP copies, pixel
  statistics and loss buffers in such a file are dropped (REFERENCE_DROPPED_PREFIXES); the
  architecture is read off the tensor shapes (infer_reference_config).

Files are read without unpickling code (safetensors, or torch.load(weights_only=True)) by
clip_model.read_state_dict, which also refuses NaN and Inf. Any file that does not fit the
architecture raises CheckpointMismatchError listing the missing, unexpected and wrongly shaped
tensors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ovseg_ros.engine.clip_model import (
    CheckpointMismatchError,
    check_state_dict,
    read_state_dict,
    resolve_weights_path,
)
from ovseg_ros.engine.maskformer.backbone import STAGE_NAMES, ResNetConfig
from ovseg_ros.engine.maskformer.model import MaskFormer, MaskFormerConfig

FORMAT_NAME = "ovseg-maskformer"
"""Value of the "format" metadata entry of the project's own checkpoints."""

REFERENCE_KEY_MAP = (
    ("sem_seg_head.predictor.transformer.decoder.layers.", "transformer_decoder.layers."),
    ("sem_seg_head.predictor.transformer.decoder.norm.", "transformer_decoder.norm."),
    ("sem_seg_head.predictor.", "transformer_decoder."),
    ("sem_seg_head.pixel_decoder.", "pixel_decoder."),
    ("sem_seg_head.", "pixel_decoder."),
    ("clip_adapter.non_object_embedding", "non_object_embedding"),
    ("clip_adapter.prompt_learner.", "prompt_learner."),
    ("_region_clip_adapter.prompt_learner.", "region_prompt_learner."),
    ("backbone.", "backbone."),
)
"""(reference prefix, project prefix), first match wins. `sem_seg_head.` alone is the layout of
checkpoints older than the head's version 2, whose pixel decoder sat directly in the head."""

REFERENCE_DROPPED_PREFIXES = (
    "clip_adapter.clip_model.",
    "_region_clip_adapter.clip_model.",
    "_region_clip_adapter.non_object_embedding",
    "_region_clip_adapter.pixel_",
    "region_clip_adapter.",
    "clip_adapter.pixel_mean",
    "clip_adapter.pixel_std",
    "criterion.",
    "pixel_mean",
    "pixel_std",
)
"""Reference tensors that are not part of the proposal network: the frozen CLIP (loaded on its own
by clip_model.load_clip), the stage-2 adapter but for its learned prompts (its non-object
embedding is unused: the reference drops that column before its softmax), normalisation constants
and loss buffers."""

PROMPT_PREFIX = "prompt_learner."
REGION_PROMPT_PREFIX = "region_prompt_learner."


@dataclass
class LearnedPrompts:
    """The reference's learned prompt vectors (token embeddings of the text tower).

    prefix: (P, W) vectors placed before the class name's tokens; suffix: (S, W) after it (either
    may be None). start, dot, end, pad: (1, W) token embeddings of the start token, ".", the end
    token and padding, as recorded with the prompts.
    """

    prefix: torch.Tensor | None
    suffix: torch.Tensor | None
    start: torch.Tensor | None = None
    dot: torch.Tensor | None = None
    end: torch.Tensor | None = None
    pad: torch.Tensor | None = None


@dataclass
class LoadedMaskFormer:
    """A proposal network ready for inference (eval mode) and what its file says about it.

    trained_classes: class names its class head was trained on (seen classes), or None when the
    file does not say (reference checkpoints). image_size: (height, width) it was trained at, or
    None. prompts: learned prompt vectors of the class head (and of stage 2 when it shares the
    head's adapter), or None. region_prompts: those of a separate stage-2 adapter (the
    reference's SEPERATE_ADAPTER configs, e.g. VOC 15/5), or None. dropped: reference keys left
    out.
    """

    model: MaskFormer
    source: str
    trained_classes: list[str] | None = None
    image_size: tuple[int, int] | None = None
    prompts: LearnedPrompts | None = None
    region_prompts: LearnedPrompts | None = None
    dropped: list[str] = field(default_factory=list)

    @property
    def stage_two_prompts(self) -> LearnedPrompts | None:
        """The prompt vectors the reference's stage 2 uses: the separate adapter's, else the
        head's."""
        return self.region_prompts or self.prompts


def map_reference_keys(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Renames a reference state dict to the project's names.

    Returns (renamed, dropped): renamed holds the network's tensors, `prompt_learner.*` and
    `region_prompt_learner.*`;
    dropped lists the keys left out on purpose. Keys that match no rule are kept unchanged, so
    that the shape check reports them as unexpected.
    """
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key.startswith(REFERENCE_DROPPED_PREFIXES) or key.endswith(".num_batches_tracked"):
            dropped.append(key)
            continue
        new_key = key
        for old, new in REFERENCE_KEY_MAP:
            if key.startswith(old):
                new_key = new + key[len(old) :]
                break
        renamed[new_key] = value
    return renamed, dropped


def map_torchvision_resnet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a torchvision ResNet state dict (ImageNet weights, e.g. resnet50) to the backbone's
    names (`conv1` / `bn1` -> `stem.conv1` / `stem.conv1.norm`, `layerK` -> `res{K+1}`,
    `bnI` -> `convI.norm`, `downsample.0/1` -> `shortcut` / `shortcut.norm`); drops `fc.*` and
    BatchNorm step counters."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        new = key
        for index in range(1, 5):
            new = new.replace(f"layer{index}.", f"res{index + 1}.")
        new = new.replace(".downsample.0.", ".shortcut.").replace(
            ".downsample.1.", ".shortcut.norm."
        )
        for index in (1, 2, 3):
            new = new.replace(f".bn{index}.", f".conv{index}.norm.")
        if new.startswith("conv1."):
            new = "stem." + new
        elif new.startswith("bn1."):
            new = "stem.conv1.norm." + new[len("bn1.") :]
        renamed[new] = value
    return renamed


def _block_count(state: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of distinct integer indices right after `prefix` in the keys."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for key in state if (m := pattern.match(key))})


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointMismatchError(
            f"not a MaskFormer checkpoint: tensor {key!r} is missing (have e.g. "
            + ", ".join(sorted(state)[:5])
            + ")"
        )
    return tuple(state[key].shape)


def infer_reference_config(state: dict[str, torch.Tensor], heads: int = 8) -> MaskFormerConfig:
    """The MaskFormerConfig that a renamed reference state dict was made with, from tensor shapes.

    Not readable from shapes, so taken from the reference's configs: attention heads (8), the
    stride in the 3x3 convs, and res5's dilations: 1, 2, 4 with the deep stem (R101c), else 1.
    """
    deep_stem = "backbone.stem.conv3.weight" in state
    bottleneck = "backbone.res2.0.conv3.weight" in state
    blocks = tuple(_block_count(state, f"backbone.{name}.") for name in STAGE_NAMES)
    if not all(blocks):
        raise CheckpointMismatchError(
            f"not a ResNet MaskFormer checkpoint: residual blocks per stage {blocks}"
        )
    stem_key = "backbone.stem.conv3.weight" if deep_stem else "backbone.stem.conv1.weight"
    last_conv = "conv3" if bottleneck else "conv2"
    res5_grid = (1, 2, 4) if deep_stem and blocks[3] == 3 else (1,) * blocks[3]
    backbone = ResNetConfig(
        blocks_per_stage=blocks,
        block="bottleneck" if bottleneck else "basic",
        stem="deeplab" if deep_stem else "basic",
        stem_channels=_shape(state, stem_key)[0],
        res2_channels=_shape(state, f"backbone.res2.0.{last_conv}.weight")[0],
        bottleneck_channels=_shape(state, "backbone.res2.0.conv1.weight")[0],
        res5_multi_grid=res5_grid,
    )
    query_shape = _shape(state, "transformer_decoder.query_embed.weight")
    class_layers = _block_count(state, "transformer_decoder.class_embed.layers.")
    return MaskFormerConfig(
        backbone=backbone,
        conv_dim=_shape(state, "pixel_decoder.layer_1.weight")[0],
        mask_dim=_shape(state, "pixel_decoder.mask_features.weight")[0],
        hidden_dim=query_shape[1],
        num_queries=query_shape[0],
        num_layers=_block_count(state, "transformer_decoder.layers."),
        heads=heads,
        feedforward_dim=_shape(state, "transformer_decoder.layers.0.linear1.weight")[0],
        embedding_dim=_shape(state, "non_object_embedding")[1],
        embed_hidden_dim=_shape(state, "transformer_decoder.class_embed.layers.0.weight")[0],
        embed_layers=class_layers,
    )


def split_prompts(
    state: dict[str, torch.Tensor], prefix: str = PROMPT_PREFIX
) -> LearnedPrompts | None:
    """Removes the `prefix*` entries (learned prompt vectors) from `state` and returns them, or
    None if absent."""
    keys = [k for k in state if k.startswith(prefix)]
    entries = {k[len(prefix) :]: state.pop(k) for k in keys}
    if "prefix_prompt" not in entries and "suffix_prompt" not in entries:
        return None
    return LearnedPrompts(
        prefix=entries.get("prefix_prompt"),
        suffix=entries.get("suffix_prompt"),
        start=entries.get("start_signal"),
        dot=entries.get("dot_signal"),
        end=entries.get("end_signal"),
        pad=entries.get("pad_signal"),
    )


def _load_into(model: MaskFormer, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load after a readable check; BatchNorm's step counters may be absent."""
    expected = model.state_dict()
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = expected[key]
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True)


def load_reference_checkpoint(
    path: str | Path, config: MaskFormerConfig | None = None
) -> LoadedMaskFormer:
    """Loads a zsseg.baseline / detectron2 checkpoint (.pth, .pt or .safetensors) into a
    MaskFormer. `config` defaults to the one read off the tensor shapes."""
    raw = read_state_dict(path)
    state, dropped = map_reference_keys(raw)
    prompts = split_prompts(state)
    region_prompts = split_prompts(state, REGION_PROMPT_PREFIX)
    config = config or infer_reference_config(state)
    model = MaskFormer(config)
    _load_into(model, state, str(path))
    return LoadedMaskFormer(
        model=model.eval(),
        source=str(path),
        prompts=prompts,
        region_prompts=region_prompts,
        dropped=sorted(dropped),
    )


def save_maskformer(
    path: str | Path,
    model: MaskFormer,
    trained_classes: list[str],
    image_size: tuple[int, int],
    extra_metadata: dict[str, str] | None = None,
) -> None:
    """Writes the project's format: safetensors with config, trained classes and the training
    image size (height, width) in the metadata."""
    from safetensors.torch import save_file

    metadata = {
        "format": FORMAT_NAME,
        "config": json.dumps(model.config.to_dict()),
        "trained_classes": json.dumps(list(trained_classes)),
        "image_size": json.dumps(list(image_size)),
        **(extra_metadata or {}),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)


def read_metadata(path: str | Path) -> dict[str, str]:
    """Metadata of a safetensors file ({} when it has none); CheckpointMismatchError when the file
    is not a readable safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - every reader error means "not a usable checkpoint"
        raise CheckpointMismatchError(f"{path} is not a readable safetensors file: {exc}") from exc


def load_maskformer(path: str | Path, device: str | torch.device = "cpu") -> LoadedMaskFormer:
    """Loads a proposal network: the project's safetensors format (config from its metadata) or a
    reference checkpoint (anything else). Returns it in eval mode on `device`. A relative path is
    looked up as clip_model.resolve_weights_path says."""
    path = resolve_weights_path(path)
    metadata = read_metadata(path) if path.suffix == ".safetensors" else {}
    if metadata.get("format") != FORMAT_NAME:
        loaded = load_reference_checkpoint(path)
    else:
        try:
            config = MaskFormerConfig.from_dict(json.loads(metadata["config"]))
            trained = json.loads(metadata["trained_classes"])
            image_size = tuple(json.loads(metadata["image_size"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointMismatchError(f"{path} has unreadable metadata: {exc}") from exc
        state = read_state_dict(path)
        prompts = split_prompts(state)
        model = MaskFormer(config)
        _load_into(model, state, str(path))
        loaded = LoadedMaskFormer(
            model=model.eval(),
            source=str(path),
            trained_classes=trained,
            image_size=image_size,
            prompts=prompts,
        )
    loaded.model.to(device)
    return loaded
