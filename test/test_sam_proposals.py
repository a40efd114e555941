"""The "sam" and "sam2" proposal generators (Segment Anything 1 and 2, an optional extra): the
mask filters and de-duplication on hand-made logits, the point-grid loop on a small SAM built
from the package's own modules, the wiring through the registry, build_segmenter, the command
line and the node's parameters, and the errors for a missing package, checkpoint or model; the
real architectures with random weights in the slow tests."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from tiny_model import TINY_CHECKPOINT

from ovseg_ros.cli import build_parser, main
from ovseg_ros.engine.clip_model import CheckpointMismatchError, WeightsNotFoundError
from ovseg_ros.engine.proposals import build_proposal_generator
from ovseg_ros.engine.proposals.sam import (
    SAM2_CONFIGS,
    MissingExtraError,
    SamProposalGenerator,
    guess_sam2_model,
    guess_sam_model,
    point_grid,
    select_masks,
    stability_scores,
)
from ovseg_ros.engine.segmenter import build_segmenter

needs_sam = pytest.mark.skipif(
    importlib.util.find_spec("segment_anything") is None, reason="segment-anything not installed"
)

LOOSE = {"pred_iou_threshold": 0.0, "stability_threshold": 0.0}
"""Filters off: random weights predict IoU and stability far below the real thresholds."""


def tiny_sam(image_size: int = 64):
    """A SAM of the package's own modules, small enough for a test: a one-block ViT on a
    image_size input, a one-layer two-way transformer."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = image_size // 16
    torch.manual_seed(0)
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            embed_dim=32,
            depth=1,
            num_heads=2,
            out_chans=32,
            use_rel_pos=True,
            window_size=0,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
    ).eval()


@pytest.fixture
def tiny_registry(monkeypatch):
    """sam_model_registry's vit_b builds tiny_sam(), so the generator's own loading path runs."""
    from segment_anything import sam_model_registry

    monkeypatch.setitem(sam_model_registry, "vit_b", lambda: tiny_sam())


def image(height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)


# The filters and the de-duplication, on hand-made decoder outputs.


def test_point_grid_is_cell_centres_row_by_row():
    grid = point_grid(2, 40, 100)
    assert grid.tolist() == [[25.0, 10.0], [75.0, 10.0], [25.0, 30.0], [75.0, 30.0]]


def test_stability_is_the_area_ratio_of_the_logits_thresholded_at_plus_and_minus_offset():
    logits = torch.full((3, 4, 4), -5.0)
    logits[0, :2] = 5.0  # a crisp mask: both thresholds agree
    logits[1, :1] = 5.0
    logits[1, 1:4] = 0.5  # a soft one: 4 pixels above +1, 16 above -1
    scores = stability_scores(logits, threshold=0.0, offset=1.0)
    assert scores.tolist() == [1.0, 0.25, 0.0]  # the empty mask scores 0, not NaN


def _square(top: int, left: int, size: int, soft: bool = False) -> torch.Tensor:
    logits = torch.full((20, 20), -5.0)
    logits[top : top + size, left : left + size] = 0.5 if soft else 5.0
    return logits


def test_select_masks_filters_then_keeps_the_best_of_overlapping_boxes_in_score_order():
    logits = torch.stack(
        [
            _square(0, 0, 10),  # 0: kept
            _square(0, 0, 9),  # 1: box IoU 0.81 with 0, lower score: a duplicate
            _square(10, 10, 8),  # 2: kept, best score
            _square(10, 0, 8),  # 3: predicted IoU too low
            _square(0, 10, 8, soft=True),  # 4: unstable
            torch.full((20, 20), -5.0),  # 5: empty
        ]
    )
    scores = torch.tensor([0.9, 0.89, 0.95, 0.5, 0.99, 0.99])
    keep = select_masks(logits, scores, 0.88, 0.95, nms_iou=0.7, limit=10)
    assert keep.tolist() == [2, 0]
    assert select_masks(logits, scores, 0.88, 0.95, nms_iou=0.9, limit=10).tolist() == [2, 0, 1]
    assert select_masks(logits, scores, 0.88, 0.95, nms_iou=0.7, limit=1).tolist() == [2]
    assert select_masks(logits, scores, 0.99, 0.95, nms_iou=0.7, limit=10).tolist() == []
    assert select_masks(logits, scores, 0.0, 0.0, nms_iou=1.0, limit=10).tolist() == [4, 2, 0, 1, 3]


# The generator on a small SAM of the package's modules.


@needs_sam
def test_masks_are_bool_at_the_image_size_best_first_at_most_max_proposals():
    generator = SamProposalGenerator.from_network(
        tiny_sam(), device="cpu", points_per_side=4, points_per_batch=5, max_proposals=6,
        nms_iou=1.0, **LOOSE,
    )  # fmt: skip
    proposals = generator(image(48, 64))
    assert proposals.masks.shape == (6, 48, 64) and proposals.masks.dtype == torch.bool
    assert proposals.masks.device.type == "cpu"
    assert proposals.weights.shape == (6,) and proposals.weights.dtype == torch.float32
    assert (proposals.weights > 0).all()
    assert torch.equal(proposals.weights, proposals.weights.sort(descending=True).values)
    assert proposals.class_scores is None
    assert len(generator(image(30, 90))) == 6  # another size, another aspect


@needs_sam
def test_nothing_passing_the_filters_gives_an_empty_stack_of_the_image_size():
    generator = SamProposalGenerator.from_network(
        tiny_sam(), device="cpu", points_per_side=4, pred_iou_threshold=1.0
    )
    proposals = generator(image(48, 64))
    assert proposals.masks.shape == (0, 48, 64) and proposals.masks.dtype == torch.bool
    assert proposals.weights.shape == (0,)


@needs_sam
def test_batching_does_not_change_the_result():
    settings = {"device": "cpu", "points_per_side": 4, "max_proposals": 50, "nms_iou": 0.9}
    one = SamProposalGenerator.from_network(tiny_sam(), points_per_batch=1, **settings, **LOOSE)
    all_ = SamProposalGenerator.from_network(tiny_sam(), points_per_batch=64, **settings, **LOOSE)
    a, b = one(image()), all_(image())
    assert torch.equal(a.masks, b.masks) and torch.allclose(a.weights, b.weights)


@needs_sam
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"max_proposals": 0}, "max_proposals must be an integer >= 1"),
        ({"points_per_side": 0}, "points_per_side must be an integer >= 1"),
        ({"nms_iou": 1.5}, "nms_iou must be between 0 and 1"),
        ({"device": "tpu"}, "device must be one of"),
    ],
)
def test_bad_settings_are_refused(setting, message):
    with pytest.raises(ValueError, match=message):
        SamProposalGenerator.from_network(tiny_sam(), **setting)


# Loading: registry, checkpoints, errors.


@needs_sam
def test_registered_by_name_with_a_checkpoint_that_fits(tiny_registry, tmp_path):
    expected = tiny_sam()
    torch.nn.init.normal_(expected.mask_decoder.iou_token.weight)
    path = tmp_path / "sam.pth"
    torch.save(expected.state_dict(), path)
    generator = build_proposal_generator(
        "sam", checkpoint=str(path), device="cpu", max_proposals=3, points_per_side=4
    )
    assert isinstance(generator, SamProposalGenerator) and generator.model_name == "vit_b"
    loaded = generator.network.mask_decoder.iou_token.weight
    assert torch.equal(loaded, expected.mask_decoder.iou_token.weight)
    assert len(generator(image())) <= 3


@pytest.mark.parametrize("name", ["sam", "sam2"])
def test_no_checkpoint_says_which_parameter_to_set(name):
    pytest.importorskip({"sam": "segment_anything", "sam2": "sam2"}[name])
    with pytest.raises(ValueError, match=f"'{name}' needs weights: set proposal_checkpoint"):
        build_proposal_generator(name, device="cpu")


@needs_sam
def test_missing_checkpoint_file_names_the_places_looked(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="weights file .*no-such.pth not found"):
        build_proposal_generator("sam", checkpoint=str(tmp_path / "no-such.pth"), device="cpu")


@needs_sam
def test_checkpoint_of_another_model_type_names_both(tmp_path):
    path = tmp_path / "sam_vit_l.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16)}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        build_proposal_generator("sam", checkpoint=str(path), model="vit_b", device="cpu")
    message = str(error.value)
    assert f"proposal checkpoint {path} does not fit sam model 'vit_b'" in message
    assert "it looks like a vit_l checkpoint" in message and "shape mismatch" in message


@needs_sam
def test_unknown_model_types_are_refused(tiny_registry):
    with pytest.raises(ValueError, match="unknown sam model 'vit_x'; known: vit_b, vit_l, vit_h"):
        build_proposal_generator("sam", model="vit_x", random_weights=True, device="cpu")


def test_model_types_are_told_from_the_checkpoints_tensors():
    def state(width: int, blocks: int, sam21: bool) -> dict[str, torch.Tensor]:
        tensors = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(width, 3, 1, 1)}
        tensors.update(
            {f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(blocks)}
        )
        return tensors | ({"no_obj_embed_spatial": torch.zeros(1)} if sam21 else {})

    assert guess_sam2_model(state(96, 12, True)) == "hiera_t"
    assert guess_sam2_model(state(112, 24, True)) == "hiera_b+"
    assert guess_sam2_model(state(144, 48, False)) == "sam2_hiera_l"
    assert guess_sam2_model(state(96, 13, True)) is None
    assert guess_sam2_model({}) is None
    assert guess_sam_model({"image_encoder.patch_embed.proj.weight": torch.zeros(1280, 3, 1, 1)})
    assert guess_sam_model(state(96, 12, True)) is None
    assert SAM2_CONFIGS["hiera_t"] == SAM2_CONFIGS["sam2.1_hiera_tiny"]
    assert SAM2_CONFIGS["sam2_hiera_b+"] == "configs/sam2/sam2_hiera_b+.yaml"


@pytest.mark.parametrize(("name", "package"), [("sam", "segment-anything"), ("sam2", "sam2")])
def test_missing_package_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path, name, package):
    module = {"sam": "segment_anything", "sam2": "sam2"}[name]
    monkeypatch.setitem(sys.modules, module, None)  # what an absent package raises on import
    expected = (
        f'proposal generator {name!r} needs the {package} package: pip install "ovseg_ros[sam]"'
    )
    with pytest.raises(MissingExtraError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        build_proposal_generator(name, random_weights=True, device="cpu")
    assert issubclass(MissingExtraError, ImportError)
    assert issubclass(MissingExtraError, RuntimeError)  # the CLI's and node's user errors
    args = ["bench", "--model", "ovseg-tiny-clip", "--device", "cpu", "--size", "64x48"]
    args += ["--proposal-generator", name, "--classifier", "dense", "--iterations", "1"]
    assert main([*args, "--out", str(tmp_path)]) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert error.startswith(f"ovseg bench: error: {expected} (")


# Wiring: build_segmenter, the command line, the node's parameters, the benchmark.


@needs_sam
def test_build_segmenter_passes_checkpoint_model_and_device(tiny_registry, tmp_path):
    path = tmp_path / "sam.safetensors"
    from safetensors.torch import save_file

    save_file(tiny_sam().state_dict(), str(path))
    segmenter = build_segmenter(
        "ovseg-tiny-clip",
        checkpoint=TINY_CHECKPOINT,
        device="cpu",
        proposal_generator="sam",
        proposal_checkpoint=path,
        proposal_model="vit_b",
        max_proposals=4,
    )
    generator = segmenter.proposals
    assert isinstance(generator, SamProposalGenerator)
    assert generator.device == segmenter.clip.device and generator.max_proposals == 4
    assert generator.model_name == "vit_b"


def test_build_segmenter_refuses_a_proposal_model_for_other_generators():
    with pytest.raises(ValueError, match="'superpixel' takes no proposal model"):
        build_segmenter(
            "ovseg-tiny-clip", checkpoint=TINY_CHECKPOINT, proposal_model="vit_b", device="cpu"
        )


@needs_sam
def test_command_line_takes_a_proposal_model_and_says_what_is_missing(tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args(["segment", "x.png", "--vocab", "a", "--proposal-model", "hiera_t"])
    assert args.proposal_model == "hiera_t"
    assert parser.parse_args(["bench", "--proposal-model", "vit_l"]).proposal_model == "vit_l"
    assert parser.parse_args(["bench"]).proposal_model == ""
    scene = tmp_path / "scene.png"
    scene.write_bytes(b"")
    base = ["segment", str(scene), "--vocab", "a", "--checkpoint", str(TINY_CHECKPOINT)]
    base += ["--device", "cpu", "--out", str(tmp_path)]
    assert main([*base, "--proposals", "sam"]) == 2
    assert "'sam' needs weights: set proposal_checkpoint" in capsys.readouterr().err
    assert main([*base, "--proposal-model", "vit_b"]) == 2
    assert "'superpixel' takes no proposal model" in capsys.readouterr().err


def test_node_parameter_proposal_model_is_checked():
    parameters = pytest.importorskip("ovseg_ros.ros.parameters")
    assert parameters.DEFAULTS.proposal_model == ""
    assert set(parameters.CHOICES["proposal_generator"]) >= {"sam", "sam2"}
    for value in ("", "vit_h", "hiera_b+", "sam2_hiera_s", "configs/sam2.1/sam2.1_hiera_l.yaml"):
        assert parameters.check_value("proposal_model", value) == value
    with pytest.raises(ValueError, match="parameter proposal_model must be empty or a sam"):
        parameters.check_value("proposal_model", "vit_x")


@needs_sam
def test_bench_runs_the_generator_with_random_weights_of_the_named_model(tiny_registry, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--model", "ovseg-tiny-clip", "--device", "cpu", "--size", "64x48"]
    args += ["--proposal-generator", "sam", "--proposal-model", "vit_b", "--proposals", "5"]
    args += ["--classifier", "dense", "--iterations", "1", "--warmup", "0"]
    assert main([*args, "--out", str(out)]) == 0
    (result,) = json.loads((out / "bench.json").read_text())["results"]
    assert result["settings"]["proposal_model"] == "vit_b" and "proposals" in result["stages"]
    assert "| 5 sam vit_b |" in (out / "bench.md").read_text()


# The real architectures, random weights.


@needs_sam
@pytest.mark.slow
def test_sam_vit_b_with_random_weights():
    generator = build_proposal_generator(
        "sam", random_weights=True, device="cpu", points_per_side=3, max_proposals=4, **LOOSE
    )
    assert generator.model_name == "vit_b"
    assert sum(p.numel() for p in generator.network.parameters()) == pytest.approx(93.7e6, 1e-3)
    proposals = generator(image(48, 64))
    assert proposals.masks.shape[1:] == (48, 64) and 1 <= len(proposals) <= 4
    assert proposals.masks.dtype == torch.bool and proposals.weights.shape == (len(proposals),)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # sam2's
def test_sam2_hiera_tiny_with_random_weights():
    pytest.importorskip("sam2")
    generator = build_proposal_generator(
        "sam2", random_weights=True, device="cpu", points_per_side=3, max_proposals=4, **LOOSE
    )
    assert generator.model_name == "hiera_t"
    proposals = generator(image(48, 64))
    assert proposals.masks.shape[1:] == (48, 64) and 1 <= len(proposals) <= 4
    assert proposals.masks.dtype == torch.bool and proposals.weights.shape == (len(proposals),)
    with pytest.raises(ValueError, match="unknown sam2 model 'hiera_x'; known: hiera_t, "):
        build_proposal_generator("sam2", model="hiera_x", random_weights=True, device="cpu")
