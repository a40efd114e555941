"""The `ovseg` command: segment files, evaluate a dataset, report errors clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from tiny_model import TINY_CHECKPOINT

from ovseg_ros.benchmark import (
    SEGMENTER_STAGES,
    PaddedProposals,
    pipelined_frames_per_s,
    random_reference_maskformer,
)
from ovseg_ros.cli import main
from ovseg_ros.engine import toy_world
from ovseg_ros.engine.clip_model import load_clip
from ovseg_ros.engine.maskformer.backbone import RESNET_CONFIGS
from ovseg_ros.engine.proposals import ProposalGenerator, Proposals
from ovseg_ros.engine.segmentation import UNLABELED
from ovseg_ros.engine.segmenter import ThreadSettings

MODEL = ["--checkpoint", str(TINY_CHECKPOINT), "--device", "cpu"]


@pytest.fixture
def scene_file(tmp_path):
    scene = toy_world.generate_scene(toy_world.EVAL_SEEDS.start + 3)
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), scene.image[..., ::-1])
    return path


def test_segment_writes_overlay_labels_and_segments(tmp_path, scene_file, capsys):
    out = tmp_path / "out"
    vocab = ",".join(toy_world.shape_classes())
    assert main(["segment", str(scene_file), "--vocab", vocab, "--out", str(out), *MODEL]) == 0
    overlay = cv2.imread(str(out / "scene_overlay.png"), cv2.IMREAD_UNCHANGED)
    labels = cv2.imread(str(out / "scene_labels.png"), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (240, 320, 3) and overlay.dtype == np.uint8
    assert labels.shape == (240, 320) and labels.dtype == np.uint16
    assert set(np.unique(labels)) <= set(range(7)) | {UNLABELED}
    summary = json.loads((out / "scene_segments.json").read_text())
    assert summary["class_names"] == toy_world.shape_classes()
    assert sum(s["area"] for s in summary["segments"]) <= 240 * 320
    assert list(summary["timings_ms"]) == [
        "proposals",
        "crops",
        "clip_image",
        "aggregation",
        "segments",
    ]
    assert "scene.png: " in capsys.readouterr().out


def test_segment_reports_unreadable_images_and_goes_on(tmp_path, scene_file, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "out"
    args = ["segment", str(broken), str(scene_file), "--vocab", "circle,background", "--out"]
    assert main([*args, str(out), *MODEL]) == 1
    assert "cannot read image" in capsys.readouterr().err
    assert (out / "scene_overlay.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--vocab", ","], "class 0 ('') has an empty name"),
        (["--vocab", "a,A"], "duplicate class name"),
        (["--vocab", "a", "--templates", "vild"], "neither a template set"),
        (["--vocab", "a", "--checkpoint", "/no/such.safetensors"], "checkpoint file not found"),
        (["--vocab", "a", "--model", "no-such-model"], "unknown CLIP model 'no-such-model'"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(tmp_path, scene_file, capsys, extra, message):
    args = ["segment", str(scene_file), "--out", str(tmp_path), "--device", "cpu", *extra]
    if "--checkpoint" not in extra and "--model" not in extra:
        args += ["--checkpoint", str(TINY_CHECKPOINT)]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_eval_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "toy:color", "--limit", "2", "--out", str(out), "--precision", "fp32"]
    assert main([*args, "--classifier", "dense", *MODEL]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["classifier"] == "dense"
    assert report["settings"]["precision"] == "fp32 (float32)"
    assert report["num_images"] == 2
    assert 0.0 <= report["metrics"]["miou"] <= 1.0
    assert set(report["metrics"]["iou"]) == set(toy_world.color_classes())
    assert report["settings"]["templates"] == "single"
    markdown = (out / "metrics.md").read_text()
    assert "| mIoU |" in markdown and "| hIoU |" in markdown and "| orange (unseen) |" in markdown
    assert "eval toy:color [" in capsys.readouterr().err  # the progress bar


def test_eval_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing"), *MODEL]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_offline_pretrained_tag_says_what_is_missing(tmp_path):
    """open_clip tags download; offline, the command says where weights are cached and how to
    provide them (a subprocess, so HF_HUB_OFFLINE applies from the start)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run(
        [sys.executable, "-m", "ovseg_ros.cli", "segment", "x.png", "--vocab", "a"]
        + ["--model", "RN50", "--pretrained", "openai", "--device", "cpu"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "could not load CLIP weights RN50 / openai" in run.stderr
    assert str(tmp_path / "hf") in run.stderr


class _TwoMasks(ProposalGenerator):
    def __call__(self, image, vocabulary=None):
        masks = torch.zeros((2, *image.shape[:2]))
        masks[0, :5], masks[1, 5:] = 1.0, 0.5
        return Proposals(masks=masks)


def test_bench_pads_proposals_with_fixed_boxes_and_drops_the_surplus():
    image = np.zeros((40, 60, 3), np.uint8)
    padded = PaddedProposals(_TwoMasks(), 5)
    first, second = padded(image).masks, padded(image).masks
    assert first.shape == (5, 40, 60) and first.dtype == torch.float32
    assert torch.equal(first[:2], _TwoMasks()(image).masks)
    assert torch.equal(first, second)  # the same boxes every frame
    for box in first[2:] > 0:
        rows, cols = box.any(dim=1).nonzero().flatten(), box.any(dim=0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert 40 // 10 <= height < 40 // 2 and 60 // 10 <= width < 60 // 2
        assert box.sum() == height * width  # a filled rectangle
    assert torch.equal(PaddedProposals(_TwoMasks(), 1)(image).masks, first[:1])


@pytest.mark.parametrize("counts", [["--iterations", "0"], ["--warmup", "-1"]])
def test_bench_without_timed_frames_is_refused(tmp_path, capsys, counts):
    assert main(["bench", *MODEL, *counts, "--out", str(tmp_path)]) == 2
    assert "--iterations must be at least 1" in capsys.readouterr().err


def test_node_bench_with_another_generator_is_refused(tmp_path, capsys):
    args = ["bench", "--proposal-generator", "maskformer", "--node", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "superpixel proposals only" in capsys.readouterr().err


@pytest.mark.slow
def test_node_bench_reports_latency_and_streaming_rate_of_the_pipelined_node(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--model", "ovseg-tiny-clip", *MODEL, "--size", "160x120", "--node"]
    args += ["--pipeline", "--proposals", "7", "--iterations", "2", "--warmup", "0"]
    args += ["--classifier", "crop", "--precision", "fp32"]
    assert main([*args, "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    node = report["node"]
    assert node["pipeline"] is True
    assert 0 < node["latency"]["p50"] <= node["latency"]["p90"]
    assert node["frames_per_s"] > 0
    (result,) = report["results"]
    assert result["pipelined_frames_per_s"] > 0 and result["serial_frames_per_s"] > 0
    stage_ms = sum(result["stages"][stage]["mean"] for stage in SEGMENTER_STAGES)
    assert result["serial_frames_per_s"] == pytest.approx(1000.0 / stage_ms)
    markdown = (out / "bench.md").read_text()
    assert "pipeline on" in markdown and "pipelined (stage 1 of the next frame" in markdown


@pytest.mark.slow
def test_bench_with_random_weights_runs_the_papers_maskformer_architecture(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--model", "ovseg-tiny-clip", "--device", "cpu", "--size", "64x48"]
    args += ["--proposal-generator", "maskformer", "--classifier", "dense", "--proposals", "100"]
    assert main([*args, "--iterations", "1", "--warmup", "0", "--out", str(out)]) == 0
    (result,) = json.loads((out / "bench.json").read_text())["results"]
    assert result["proposals_per_frame"] == 100 and "proposals" in result["stages"]
    assert "| 100 maskformer |" in (out / "bench.md").read_text()

    clip = load_clip("ovseg-tiny-clip", random_weights=True, device="cpu")
    generator = random_reference_maskformer(clip, (48, 64), max_proposals=100)
    config = generator.model.config
    assert config.backbone == RESNET_CONFIGS["R101c"] and config.num_queries == 100
    assert config.embedding_dim == clip.embed_dim
    masks = generator(np.zeros((48, 64, 3), np.uint8)).masks
    assert masks.shape == (100, 48, 64) and masks.dtype == torch.float32


class _FailingStage:
    """A segmenter stand-in whose propose or segment raises on its third call."""

    def __init__(self, failing: str) -> None:
        self.failing, self.calls = failing, {"propose": 0, "segment": 0}

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if name == self.failing and self.calls[name] == 3:
            raise RuntimeError(f"{name} failed")

    def propose(self, image, vocabulary):
        self._call("propose")
        return Proposals(torch.ones((1, 4, 4), dtype=torch.bool))

    def segment(self, image, vocabulary, proposals):
        self._call("segment")


@pytest.mark.parametrize("failing", ["propose", "segment"])
def test_pipelined_timing_reraises_a_stage_failure_and_restores_threads(failing):
    before = ThreadSettings.current()
    stage = _FailingStage(failing)
    with pytest.raises(RuntimeError, match=f"{failing} failed"):
        pipelined_frames_per_s(stage, None, np.zeros((4, 4, 3), np.uint8), frames=10)
    assert ThreadSettings.current() == before
    assert stage.calls["segment"] <= 3 and stage.calls["propose"] <= 11


def test_bench_times_every_stage_and_compares_modes_at_one_precision(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "--model", "ovseg-tiny-clip", *MODEL, "--size", "160x120"]
    args += ["--proposals", "7", "--classifier", "crop", "dense", "--precision", "fp32", "bf16"]
    assert main([*args, "--iterations", "2", "--warmup", "0", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    results = report["results"]
    assert [(r["settings"]["classifier"], r["dtype"]) for r in results] == [
        ("crop", "float32"),
        ("dense", "float32"),
        ("crop", "bfloat16"),
        ("dense", "bfloat16"),
    ]
    stages = {"decode", "proposals", "crops", "clip_image", "aggregation", "render", "convert"}
    for result in results:
        assert stages <= set(result["stages"])
        assert result["proposals_per_frame"] == 7
        assert result["frames_per_s"] == pytest.approx(1000 / result["frame_ms"]["mean"])
    markdown = (out / "bench.md").read_text()
    assert "torch_threads" in markdown
    assert "frames/s ratio dense/crop, ovseg-tiny-clip float32" in markdown
    assert "frames/s ratio dense/crop, ovseg-tiny-clip bfloat16" in markdown
    assert markdown in capsys.readouterr().out
