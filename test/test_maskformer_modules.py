"""MaskFormer modules: shapes, and values checked against independent computations
(torchvision's ResNet-50, PyTorch's TransformerDecoderLayer, hand-worked numbers)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ovseg_ros.engine.maskformer.backbone import (
    RESNET_CONFIGS,
    FrozenBatchNorm2d,
    ResNet,
    ResNetConfig,
)
from ovseg_ros.engine.maskformer.checkpoint import map_torchvision_resnet_keys
from ovseg_ros.engine.maskformer.model import MaskFormer, MaskFormerConfig
from ovseg_ros.engine.maskformer.pixel_decoder import FPNPixelDecoder
from ovseg_ros.engine.maskformer.transformer_decoder import (
    MLP,
    DecoderLayer,
    TransformerDecoder,
    sine_position_encoding,
)

SMALL_BACKBONE = ResNetConfig(
    blocks_per_stage=(1, 1, 1, 1),
    block="basic",
    stem_channels=8,
    res2_channels=8,
    res5_multi_grid=(1,),
)


def small_config(**changes) -> MaskFormerConfig:
    values = dict(
        backbone=SMALL_BACKBONE,
        conv_dim=16,
        mask_dim=16,
        hidden_dim=16,
        num_queries=5,
        num_layers=2,
        heads=2,
        feedforward_dim=32,
        dropout=0.0,
        embedding_dim=12,
        embed_hidden_dim=24,
    )
    values.update(changes)
    return MaskFormerConfig(**values)


def test_frozen_batch_norm_values():
    norm = FrozenBatchNorm2d(2)
    norm.weight.copy_(torch.tensor([2.0, 1.0]))
    norm.bias.copy_(torch.tensor([1.0, -1.0]))
    norm.running_mean.copy_(torch.tensor([3.0, 0.0]))
    norm.running_var.copy_(torch.tensor([4.0 - 1e-5, 1.0 - 1e-5]))
    x = torch.tensor([5.0, 2.0]).view(1, 2, 1, 1)
    # (5 - 3) / 2 * 2 + 1 = 3; (2 - 0) / 1 * 1 - 1 = 1
    assert norm(x).flatten().tolist() == pytest.approx([3.0, 1.0])


@pytest.mark.parametrize("name", ["R50", "R101", "R101c"])
def test_reference_backbones_strides_channels_and_sizes(name):
    config = RESNET_CONFIGS[name]
    model = ResNet(config).eval()
    with torch.no_grad():
        features = model(torch.zeros(1, 3, 64, 96))
    sizes = {k: (tuple(v.shape[1:])) for k, v in features.items()}
    assert sizes == {
        "res2": (256, 16, 24),
        "res3": (512, 8, 12),
        "res4": (1024, 4, 6),
        "res5": (2048, 2, 3),
    }
    convs = sum(p.numel() for p in model.parameters())
    # Frozen BN holds buffers, so the parameters are the conv weights: those of torchvision's
    # ResNet of the same depth without BN and fc. R101c's deep stem replaces the 7x7 conv (9408)
    # by 3x3 convs 3-64, 64-64, 64-128 (1728 + 36864 + 73728) and feeds res2 128 channels
    # instead of 64 (first 1x1 conv and shortcut: +64 * (64 + 256)).
    builder = torchvision.models.resnet50 if name == "R50" else torchvision.models.resnet101
    expected = sum(
        m.weight.numel() for m in builder(weights=None).modules() if isinstance(m, torch.nn.Conv2d)
    )
    stem_delta = (1728 + 36864 + 73728 - 9408) + 64 * (64 + 256)
    assert convs == expected + (stem_delta if name == "R101c" else 0)
    if name == "R50":
        assert convs == 23_454_912


def test_r101c_deep_stem_and_multi_grid():
    model = ResNet(RESNET_CONFIGS["R101c"])
    assert [model.stem.conv1.out_channels, model.stem.conv2.out_channels] == [64, 64]
    assert model.stem.conv3.out_channels == 128
    assert [block.conv2.dilation[0] for block in model.res5] == [1, 2, 4]
    assert model.res5[0].conv2.stride == (2, 2)
    # stride in the 3x3 conv, not the 1x1 (STRIDE_IN_1X1: False)
    assert model.res3[0].conv1.stride == (1, 1) and model.res3[0].conv2.stride == (2, 2)


def test_r50_matches_torchvision_resnet50_on_same_weights():
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.0)
            module.bias.data.uniform_(-0.1, 0.1)
    ours = ResNet(RESNET_CONFIGS["R50"]).eval()
    ours.load_state_dict(map_torchvision_resnet_keys(reference.state_dict()), strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        expected = {}
        for layer, name in zip(
            [reference.layer1, reference.layer2, reference.layer3, reference.layer4],
            ["res2", "res3", "res4", "res5"],
            strict=True,
        ):
            x = layer(x)
            expected[name] = x
        got = ours(images)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5)


def test_pixel_decoder_matches_hand_written_top_down_pass():
    torch.manual_seed(1)
    channels = {"res2": 4, "res3": 6, "res4": 8, "res5": 10}
    decoder = FPNPixelDecoder(channels, conv_dim=8, mask_dim=5).eval()
    features = {
        "res2": torch.randn(1, 4, 16, 16),
        "res3": torch.randn(1, 6, 8, 8),
        "res4": torch.randn(1, 8, 4, 4),
        "res5": torch.randn(1, 10, 2, 2),
    }

    def conv_gn(module, x, padding):
        x = F.conv2d(x, module.weight, None, padding=padding)
        return F.group_norm(x, 8, module.norm.weight, module.norm.bias, eps=1e-5)

    for module in decoder.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    y = F.relu(conv_gn(decoder.layer_4, features["res5"], 1))
    for k, name in [(3, "res4"), (2, "res3"), (1, "res2")]:
        lateral = conv_gn(getattr(decoder, f"adapter_{k}"), features[name], 0)
        y = lateral + y.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        y = F.relu(conv_gn(getattr(decoder, f"layer_{k}"), y, 1))
    expected = F.conv2d(y, decoder.mask_features.weight, decoder.mask_features.bias, padding=1)
    with torch.no_grad():
        got = decoder(features)
    assert got.shape == (1, 5, 16, 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_sine_position_encoding_hand_values():
    code = sine_position_encoding(1, 2, 4)
    # rows: position 1 of 1 -> 2 pi; columns: 1 of 2 -> pi, 2 of 2 -> 2 pi; frequencies 1, 1.
    # channels: sin(row), cos(row), sin(col), cos(col)
    assert code.shape == (4, 1, 2)
    torch.testing.assert_close(
        code[:, 0, 0], torch.tensor([0.0, 1.0, 0.0, -1.0]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(code[:, 0, 1], torch.tensor([0.0, 1.0, 0.0, 1.0]), atol=1e-5, rtol=0)
    code = sine_position_encoding(4, 1, 8)
    # 4 channels per axis, frequencies 1, 1, 100, 100; row 1 of 4 -> pi / 2.
    angle = math.pi / 2
    expected = [math.sin(angle), math.cos(angle), math.sin(angle / 100), math.cos(angle / 100)]
    torch.testing.assert_close(code[:4, 0, 0], torch.tensor(expected), atol=1e-6, rtol=0)


def test_decoder_layer_matches_pytorch_without_positions():
    torch.manual_seed(2)
    ours = DecoderLayer(16, 4, 32, dropout=0.0).eval()
    reference = torch.nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    target, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    zeros_m, zeros_q = torch.zeros(1, 7, 16), torch.zeros(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(target, memory, zeros_m, zeros_q), reference(target, memory), rtol=1e-5, atol=1e-5
        )


def test_decoder_layer_adds_positions_to_queries_and_keys_only():
    torch.manual_seed(3)
    layer = DecoderLayer(8, 2, 16, dropout=0.0).eval()
    target, memory = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
    memory_pos, query_pos = torch.randn(1, 4, 8), torch.randn(1, 3, 8)
    with torch.no_grad():
        q = target + query_pos
        x = layer.norm1(target + layer.self_attn(q, q, target)[0])
        x = layer.norm2(x + layer.multihead_attn(x + query_pos, memory + memory_pos, memory)[0])
        expected = layer.norm3(x + layer.linear2(F.relu(layer.linear1(x))))
        torch.testing.assert_close(layer(target, memory, memory_pos, query_pos), expected)


def test_mlp_relu_between_layers_only():
    mlp = MLP(2, 3, 1, 2)
    with torch.no_grad():
        mlp.layers[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        mlp.layers[0].bias.zero_()
        mlp.layers[1].weight.copy_(torch.tensor([[1.0, 1.0, 1.0]]))
        mlp.layers[1].bias.fill_(-10.0)
        # relu([2, -3, -2]) = [2, 0, 0] -> 2 - 10 = -8 (no ReLU after the last layer)
        assert mlp(torch.tensor([[2.0, -3.0]])).item() == pytest.approx(-8.0)


def test_transformer_decoder_outputs_every_layer_normed():
    torch.manual_seed(4)
    decoder = TransformerDecoder(
        in_channels=10, hidden_dim=16, num_queries=5, num_layers=3, heads=2,
        feedforward_dim=32, dropout=0.0, mask_dim=6, embedding_dim=12, embed_hidden_dim=20,
    ).eval()  # fmt: skip
    features, mask_features = torch.randn(2, 10, 3, 4), torch.randn(2, 6, 12, 16)
    with torch.no_grad():
        mask_logits, embeddings = decoder(features, mask_features)
        assert mask_logits.shape == (3, 2, 5, 12, 16)
        assert embeddings.shape == (3, 2, 5, 12)
        # recompute the last layer's masks from its normalised hidden state
        memory = decoder.input_proj(features).flatten(2).transpose(1, 2)
        position = sine_position_encoding(3, 4, 16).flatten(1).T[None]
        queries = decoder.query_embed.weight[None].expand(2, -1, -1)
        hidden = torch.zeros_like(queries)
        for layer in decoder.layers:
            hidden = layer(hidden, memory, position, queries)
        hidden = decoder.norm(hidden)
        expected = torch.einsum("bqc,bchw->bqhw", decoder.mask_embed(hidden), mask_features)
        torch.testing.assert_close(mask_logits[-1], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(embeddings[-1], decoder.class_embed(hidden))


def test_maskformer_shapes_padding_and_propose():
    torch.manual_seed(5)
    model = MaskFormer(small_config()).eval()
    images = torch.full((1, 3, 50, 70), 128.0)
    padded = model.normalize(images)
    assert padded.shape == (1, 3, 64, 96)
    assert padded[0, :, 50:, :].abs().max() == 0 and padded[0, :, :, 70:].abs().max() == 0
    with torch.no_grad():
        output = model(padded)
    assert output.mask_logits.shape == (2, 1, 5, 16, 24)
    assert output.query_embeddings.shape == (2, 1, 5, 12)
    proposals = model.propose(torch.randint(0, 255, (50, 70, 3), dtype=torch.uint8).numpy())
    assert proposals.masks.shape == (5, 50, 70)
    assert float(proposals.masks.min()) >= 0 and float(proposals.masks.max()) <= 1
    torch.testing.assert_close(proposals.embeddings.norm(dim=-1), torch.ones(5))


def test_class_logits_are_scaled_cosines_with_non_object_last():
    model = MaskFormer(small_config(embedding_dim=3, backbone=SMALL_BACKBONE))
    with torch.no_grad():
        model.non_object_embedding.copy_(torch.tensor([[0.0, 0.0, 5.0]]))
    text = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    queries = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    logits = model.class_logits(queries, text)
    s = 100 / math.sqrt(2)
    torch.testing.assert_close(logits, torch.tensor([[100.0, 0.0, 0.0], [0.0, s, s]]))


def test_config_round_trip():
    config = MaskFormerConfig()
    assert MaskFormerConfig.from_dict(config.to_dict()) == config
    assert config.backbone == RESNET_CONFIGS["R101c"]


def test_bad_backbone_config_is_refused():
    with pytest.raises(ValueError, match="res5_multi_grid"):
        ResNetConfig(blocks_per_stage=(1, 1, 1, 2), res5_multi_grid=(1, 2, 4))
    with pytest.raises(ValueError, match="stem"):
        ResNetConfig(stem="wide")
