"""Checkpoint import and errors: reference (zsseg.baseline / detectron2) key names, the
project's safetensors format, and clear errors for files that do not fit."""

from __future__ import annotations

import pytest
import torch

from ovseg_ros.engine.clip_model import CheckpointMismatchError, WeightsNotFoundError
from ovseg_ros.engine.maskformer.backbone import ResNetConfig
from ovseg_ros.engine.maskformer.checkpoint import (
    infer_reference_config,
    load_maskformer,
    load_reference_checkpoint,
    map_reference_keys,
    save_maskformer,
)
from ovseg_ros.engine.maskformer.model import MaskFormer, MaskFormerConfig

# A small network of the reference's kind: deep stem, bottlenecks, res5 multi-grid 1-2-4.
REFERENCE_LIKE = MaskFormerConfig(
    backbone=ResNetConfig(
        blocks_per_stage=(1, 1, 2, 3),
        stem="deeplab",
        stem_channels=16,
        res2_channels=16,
        bottleneck_channels=4,
        res5_multi_grid=(1, 2, 4),
    ),
    conv_dim=16,
    mask_dim=16,
    hidden_dim=16,
    num_queries=4,
    num_layers=2,
    feedforward_dim=24,
    embedding_dim=8,
    embed_hidden_dim=12,
)


def reference_name(key: str, head_version: int = 2) -> str:
    """The name the reference gives a tensor of this project's MaskFormer (written from the
    reference's module tree, independently of checkpoint.REFERENCE_KEY_MAP)."""
    if key == "non_object_embedding":
        return "clip_adapter.non_object_embedding"
    if key.startswith("pixel_decoder."):
        rest = key[len("pixel_decoder.") :]
        return ("sem_seg_head.pixel_decoder." if head_version == 2 else "sem_seg_head.") + rest
    if key.startswith("transformer_decoder.layers."):
        rest = key[len("transformer_decoder.layers.") :]
        return "sem_seg_head.predictor.transformer.decoder.layers." + rest
    if key.startswith("transformer_decoder.norm."):
        return "sem_seg_head.predictor.transformer.decoder.norm." + key.rsplit(".", 1)[1]
    if key.startswith("transformer_decoder."):
        return "sem_seg_head.predictor." + key[len("transformer_decoder.") :]
    return key


def make_reference_file(path, head_version: int = 2, drop: str | None = None):
    torch.manual_seed(0)
    model = MaskFormer(REFERENCE_LIKE).eval()
    for name, buffer in model.named_buffers():
        if name.endswith("running_var"):
            buffer.uniform_(0.5, 1.5)
        elif name.endswith(("running_mean", ".bias")):
            buffer.uniform_(-0.2, 0.2)
    state = {reference_name(k, head_version): v.clone() for k, v in model.state_dict().items()}
    state.update(
        {
            "clip_adapter.clip_model.positional_embedding": torch.zeros(77, 512),
            "clip_adapter.prompt_learner.prefix_prompt": torch.full((16, 512), 0.5),
            "clip_adapter.prompt_learner.start_signal": torch.ones(1, 512),
            "pixel_mean": torch.zeros(3, 1, 1),
            "criterion.empty_weight": torch.ones(157),
        }
    )
    if drop:
        del state[drop]
    torch.save({"model": state, "iteration": 59999}, path)
    return model


def test_reference_key_names_map_to_project_names():
    renamed, dropped = map_reference_keys(
        {
            "backbone.stem.conv3.norm.running_var": torch.zeros(1),
            "sem_seg_head.pixel_decoder.adapter_1.norm.weight": torch.zeros(1),
            "sem_seg_head.layer_4.weight": torch.zeros(1),
            "sem_seg_head.predictor.transformer.decoder.layers.5.multihead_attn.in_proj_weight": (
                torch.zeros(1)
            ),
            "sem_seg_head.predictor.transformer.decoder.norm.bias": torch.zeros(1),
            "sem_seg_head.predictor.class_embed.layers.1.weight": torch.zeros(1),
            "clip_adapter.non_object_embedding": torch.zeros(1),
            "clip_adapter.prompt_learner.prefix_prompt": torch.zeros(1),
            "clip_adapter.clip_model.visual.conv1.weight": torch.zeros(1),
            "backbone.res2.0.conv1.norm.num_batches_tracked": torch.zeros(1),
            "something.else": torch.zeros(1),
        }
    )
    assert sorted(renamed) == [
        "backbone.stem.conv3.norm.running_var",
        "non_object_embedding",
        "pixel_decoder.adapter_1.norm.weight",
        "pixel_decoder.layer_4.weight",
        "prompt_learner.prefix_prompt",
        "something.else",
        "transformer_decoder.class_embed.layers.1.weight",
        "transformer_decoder.layers.5.multihead_attn.in_proj_weight",
        "transformer_decoder.norm.bias",
    ]
    assert sorted(dropped) == [
        "backbone.res2.0.conv1.norm.num_batches_tracked",
        "clip_adapter.clip_model.visual.conv1.weight",
    ]


@pytest.mark.parametrize("head_version", [1, 2])
def test_reference_checkpoint_loads_with_same_outputs(tmp_path, head_version):
    path = tmp_path / "model_final.pth"
    original = make_reference_file(path, head_version)
    loaded = load_reference_checkpoint(path)
    assert loaded.model.config == REFERENCE_LIKE
    assert loaded.trained_classes is None
    assert loaded.prompts is not None and loaded.prompts.prefix.shape == (16, 512)
    assert loaded.prompts.suffix is None
    assert loaded.prompts.start.shape == (1, 512)
    assert "clip_adapter.clip_model.positional_embedding" in loaded.dropped
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = original(images), loaded.model(images)
    torch.testing.assert_close(got.mask_logits, expected.mask_logits)
    torch.testing.assert_close(got.query_embeddings, expected.query_embeddings)


def test_infer_reference_config_reads_r101c_shapes():
    state = MaskFormer(MaskFormerConfig(num_queries=7)).state_dict()
    config = infer_reference_config(state)
    assert config == MaskFormerConfig(num_queries=7)


def test_project_format_round_trip(tmp_path):
    torch.manual_seed(1)
    model = MaskFormer(REFERENCE_LIKE).eval()
    path = tmp_path / "net.safetensors"
    save_maskformer(path, model, ["background", "circle"], (120, 160))
    loaded = load_maskformer(path)
    assert loaded.trained_classes == ["background", "circle"]
    assert loaded.image_size == (120, 160)
    assert loaded.model.config == REFERENCE_LIKE
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value)


def test_missing_tensor_is_named(tmp_path):
    path = tmp_path / "model_final.pth"
    make_reference_file(path, drop="sem_seg_head.predictor.mask_embed.layers.2.bias")
    with pytest.raises(CheckpointMismatchError, match=r"missing \(1\): transformer_decoder"):
        load_reference_checkpoint(path)


def test_unexpected_tensor_is_named(tmp_path):
    path = tmp_path / "model_final.pth"
    make_reference_file(path)
    state = torch.load(path, weights_only=True)
    state["model"]["sem_seg_head.predictor.extra_head.weight"] = torch.zeros(2)
    torch.save(state, path)
    with pytest.raises(
        CheckpointMismatchError, match=r"unexpected \(1\): transformer_decoder.extra"
    ):
        load_reference_checkpoint(path)


def test_wrong_shape_is_named(tmp_path):
    model = MaskFormer(REFERENCE_LIKE)
    path = tmp_path / "net.safetensors"
    save_maskformer(path, model, ["a"], (64, 64))
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(path))
    state["transformer_decoder.query_embed.weight"] = torch.zeros(9, 16)
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"shape mismatch \(1\): transformer_decoder.query_embed.weight: "
        r"checkpoint \(9, 16\) vs model \(4, 16\)",
    ):
        load_maskformer(path)


def test_reference_checkpoint_into_wrong_config_lists_shapes(tmp_path):
    path = tmp_path / "model_final.pth"
    make_reference_file(path)
    other = MaskFormerConfig(**{**REFERENCE_LIKE.to_dict(), "backbone": REFERENCE_LIKE.backbone,
                                "num_queries": 6})  # fmt: skip
    with pytest.raises(CheckpointMismatchError, match="query_embed.weight: checkpoint"):
        load_reference_checkpoint(path, other)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_refused(tmp_path, suffix):
    model = MaskFormer(REFERENCE_LIKE)
    path = tmp_path / f"net{suffix}"
    if suffix == ".pth":
        make_reference_file(path)
    else:
        save_maskformer(path, model, ["a"], (64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointMismatchError, match="not a readable"):
        load_maskformer(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".pkl"])
def test_non_checkpoint_file_is_refused(tmp_path, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointMismatchError, match="not a readable"):
        load_maskformer(path)


def test_state_dict_of_something_else_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"model": {"conv.weight": torch.zeros(3)}}, path)
    with pytest.raises(CheckpointMismatchError, match="not a ResNet MaskFormer checkpoint"):
        load_maskformer(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_maskformer(tmp_path / "absent.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_holding_nan_or_inf_are_refused_with_their_names(tmp_path, suffix):
    path = tmp_path / f"net{suffix}"
    if suffix == ".pth":
        make_reference_file(path)
        state = torch.load(path, weights_only=True)
        state["model"]["backbone.res2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
        state["model"]["sem_seg_head.predictor.query_embed.weight"][1, 2] = -float("inf")
        torch.save(state, path)
        names = ["backbone.res2.0.conv1.weight", "sem_seg_head.predictor.query_embed.weight"]
    else:
        model = MaskFormer(REFERENCE_LIKE)
        with torch.no_grad():
            model.transformer_decoder.query_embed.weight[0, 0] = float("inf")
        save_maskformer(path, model, ["a"], (64, 64))
        names = ["transformer_decoder.query_embed.weight"]
    with pytest.raises(CheckpointMismatchError, match="NaN or Inf") as error:
        load_maskformer(path)
    assert f"in {len(names)} tensor(s): {', '.join(names)}" in str(error.value)


def test_relative_path_is_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = load_maskformer("models/ovseg-toy-maskformer.safetensors")
    assert loaded.source.endswith("models/ovseg-toy-maskformer.safetensors")
    assert loaded.trained_classes
