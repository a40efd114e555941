"""The `ovseg` command: segment files, evaluate a dataset, report errors clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tiny_model import TINY_CHECKPOINT

from ovseg_ros import cli
from ovseg_ros.benchmark import (
    SEGMENTER_STAGES,
    PaddedProposals,
    pipelined_frames_per_s,
    random_reference_maskformer,
)
from ovseg_ros.cli import main
from ovseg_ros.engine import options, proposals, toy_world
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
    summary = json.loads((out / "scene_segments.json").read_text(), parse_constant=_no_nan)
    assert summary["class_names"] == toy_world.shape_classes()
    assert sum(s["area"] for s in summary["segments"]) <= 240 * 320
    assert list(summary["timings_ms"]) == [
        "proposals",
        "crops",
        "clip_image",
        "aggregation",
        "segments",
    ]
    captured = capsys.readouterr()
    assert "scene.png: " in captured.out
    assert captured.err == ""  # toy classes: no note about the toy world


def _no_nan(constant: str) -> None:
    raise AssertionError(f"{constant} is not valid JSON")


def test_segment_says_why_each_input_failed_and_goes_on(tmp_path, scene_file, capsys, monkeypatch):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.png").write_text("not a png")
    (tmp_path / "empty.png").write_bytes(b"")
    locked = tmp_path / "locked.png"
    locked.write_bytes(scene_file.read_bytes())
    read_bytes = Path.read_bytes

    def refuse_locked(path):
        if path == locked:
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse_locked)  # root reads any file
    names = ["missing.png", "folder", "notes.png", "empty.png", "locked.png"]
    out = tmp_path / "out"
    args = ["segment", *(str(tmp_path / n) for n in names), str(scene_file), "--vocab", "circle"]
    assert main([*args, "--out", str(out), *MODEL]) == 1
    errors = capsys.readouterr().err.splitlines()
    expected = [
        "missing.png: no such file",
        "folder: is a directory, not an image file (give its files, e.g. DIR/*.jpg)",
        "notes.png: is not an image OpenCV can decode",
        "empty.png: is not an image OpenCV can decode",
        "locked.png: cannot be read: Permission denied",
    ]
    assert len(errors) == len(expected)
    for line, end in zip(errors, expected, strict=True):
        assert line.startswith(f"ovseg segment: error: {tmp_path}/") and end in line
    assert (out / "scene_overlay.png").is_file()


def test_segment_checks_inputs_and_options_before_loading_a_model(tmp_path, monkeypatch, capsys):
    def no_model(args):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cli, "_build", no_model)
    missing = str(tmp_path / "missing.png")
    assert main(["segment", missing, "--vocab", "circle", *MODEL]) == 2
    assert capsys.readouterr().err == f"ovseg segment: error: {missing}: no such file\n"
    for option, value, reason in [
        ("--alpha", "1.5", "must be between 0 and 1, got 1.5"),
        ("--alpha", "nan", "not a finite number: 'nan'"),
        ("--mask-threshold", "x", "not a number: 'x'"),
        ("--max-proposals", "0", "must be at least 1, got 0"),
        ("--min-proposal-area", "-1", "must be 0 or more, got -1"),
        (
            "--processing-size",
            "short:0",
            "a short-side processing size must be >= 1 (use '0' for native)",
        ),
    ]:
        assert main(["segment", missing, "--vocab", "a", option, value]) == 2
        assert capsys.readouterr().err == (
            f"ovseg segment: error: argument {option}: {reason} (see ovseg segment --help)\n"
        )
    assert main(["eval", "toy:shape", "--limit", "0"]) == 2
    assert "argument --limit: must be at least 1" in capsys.readouterr().err
    assert main(["bench", "--size", "640"]) == 2
    assert "expected WIDTHxHEIGHT such as 640x480, got '640'" in capsys.readouterr().err
    assert main(["bench", "--processing-size", "512x512"]) == 2
    assert "argument --processing-size: processing size '512x512' is not one of: N or long:N (" in (
        capsys.readouterr().err
    )


def test_inputs_with_the_same_stem_keep_their_own_outputs(tmp_path, scene_file, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "scene.png").write_bytes(scene_file.read_bytes())
    jpeg = tmp_path / "scene.jpg"
    cv2.imwrite(str(jpeg), cv2.imread(str(scene_file)))
    inputs = [scene_file, tmp_path / "a" / "scene.png", tmp_path / "b" / "scene.png", jpeg]
    out = tmp_path / "out"
    args = ["segment", *map(str, inputs), "--vocab", "circle,background", "--out", str(out)]
    assert main([*args, *MODEL]) == 0
    stems = ["scene", "scene-2", "scene-3", "scene-4"]
    for path, stem in zip(inputs, stems, strict=True):
        assert json.loads((out / f"{stem}_segments.json").read_text())["image"] == str(path)
        assert (out / f"{stem}_overlay.png").is_file() and (out / f"{stem}_labels.png").is_file()
    assert f"-> {out / 'scene-4'}_*" in capsys.readouterr().out


def test_output_stems_are_unique_without_case():
    paths = [Path("cat.jpg"), Path("x/Cat.png"), Path("cat-2.png"), Path("y/cat.jpg")]
    assert cli.output_stems(paths) == ["cat", "Cat-2", "cat-2-2", "cat-3"]


def test_checkpoint_overrides_pretrained_and_is_found_from_any_directory(
    tmp_path, scene_file, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    args = ["segment", str(scene_file), "--vocab", "circle", "--device", "cpu"]
    args += ["--pretrained", "openai", "--checkpoint", "models/ovseg-tiny-clip.safetensors"]
    assert main(args) == 0
    assert (tmp_path / "ovseg-out" / "scene_segments.json").is_file()


def test_tiny_model_asked_for_real_classes_says_so_once(capsys):
    cli.note_unknown_to_tiny_model("ovseg-tiny-clip", ["person", "circle", "sofa|couch", "Red"])
    (note,) = capsys.readouterr().err.splitlines()
    assert note.startswith("ovseg: note: the bundled ovseg-tiny-clip knows only the toy world's")
    assert "not person, sofa|couch; for real images use real CLIP weights" in note
    cli.note_unknown_to_tiny_model("ovseg-tiny-clip", ["star|ring", "background", "purple"])
    cli.note_unknown_to_tiny_model("ViT-B-16", ["person"])
    assert capsys.readouterr().err == ""


def test_help_imports_nothing_heavy():
    """--help answers in a fraction of a second: building the parser imports no torch."""
    probe = "import sys, ovseg_ros.cli as c; c.build_parser(); print(sorted(sys.modules))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(run.stdout.strip()[1:-1].replace("'", "").split(", "))
    assert not loaded & {"torch", "cv2", "numpy", "open_clip", "ovseg_ros.engine.clip_model"}
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "ovseg_ros.cli", "segment", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and run.stdout.startswith("usage: ovseg segment")
    assert time.monotonic() - started < 5.0  # torch alone takes longer on this machine


def test_parser_proposal_generators_are_the_registered_ones():
    """options.py lists the generator names for --help without importing the registry; the
    engine's other settings take their defaults from options.py itself."""
    assert list(options.PROPOSAL_GENERATORS) == proposals.proposal_generator_names()
    assert options.DEFAULT_PROPOSAL_GENERATOR in proposals.proposal_generator_names()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--vocab", ","], "class 0 ('') has an empty name"),
        (["--vocab", "a,A"], "duplicate class name"),
        (["--vocab", "a", "--templates", "vild"], "neither a template set"),
        (
            ["--vocab", "a", "--checkpoint", "/no/such.safetensors"],
            "weights file /no/such.safetensors not found; looked for /no/such.safetensors",
        ),
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
    assert main([*args, "--classifier", "dense", "--processing-size", "long:160", *MODEL]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["classifier"] == "dense"
    assert report["settings"]["processing_size"] == "160"
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


@pytest.mark.parametrize(
    "offline",
    [{"HF_ENDPOINT": "http://127.0.0.1:9"}, {"HF_HUB_OFFLINE": "1"}],
    ids=["closed-port", "hub-offline-mode"],
)
def test_offline_pretrained_tag_fails_fast_saying_what_is_missing(tmp_path, offline):
    """Weights neither cached nor downloadable (a closed port, or huggingface_hub's offline
    mode): one line naming the model, the tag, the cache and how to give a file, in seconds
    rather than the minute of retries huggingface_hub would spend (a subprocess, so that the
    environment applies from the start)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), **offline}
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8, 3), np.uint8))
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "ovseg_ros.cli", "segment", "x.png", "--vocab", "a"]
        + ["--model", "ViT-B-16", "--pretrained", "openai", "--device", "cpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 20.0
    assert run.returncode == 2
    (line,) = run.stderr.splitlines()
    cache = tmp_path / "hf" / "hub"
    assert line.startswith(
        "ovseg segment: error: CLIP weights ViT-B-16 / openai could not be loaded from the cache "
        f"{cache} nor downloaded ("
    )
    assert "or give a local weights file as checkpoint (--checkpoint; safetensors" in line


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


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        (["--iterations", "0"], "argument --iterations: must be at least 1, got 0"),
        (["--warmup", "-1"], "argument --warmup: must be 0 or more, got -1"),
    ],
)
def test_bench_without_timed_frames_is_refused(tmp_path, capsys, counts, message):
    assert main(["bench", *MODEL, *counts, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_bench_reports_the_processing_size_a_frame_is_enlarged_to(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "--model", "ovseg-tiny-clip", *MODEL, "--size", "64x48", "--proposals", "5"]
    args += ["--classifier", "dense", "--iterations", "1", "--warmup", "0", "--precision", "fp32"]
    assert main([*args, "--processing-size", "short:96", "--out", str(out)]) == 0
    (result,) = json.loads((out / "bench.json").read_text())["results"]
    assert result["settings"]["processing_size"] == "short:96" and "resize" in result["stages"]
    assert "| 64x48 (at 128x96) |" in (out / "bench.md").read_text()


def test_node_bench_with_another_generator_is_refused(tmp_path, capsys):
    args = ["bench", "--proposal-generator", "maskformer", "--node", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "a training-free generator only (hierarchy, superpixel)" in capsys.readouterr().err


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


def test_bench_profile_counts_the_host_waits_of_each_stage(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--model", "ovseg-tiny-clip", *MODEL, "--size", "160x120", "--proposals", "7"]
    args += ["--proposal-generator", "hierarchy", "--classifier", "dense", "--precision", "fp32"]
    assert main([*args, "--iterations", "1", "--warmup", "0", "--profile", "--out", str(out)]) == 0
    waits = json.loads((out / "bench.json").read_text())["results"][0]["host_waits"]
    assert set(waits) == {"stage 1", "stage 2"}
    assert waits["stage 1"]["aten::nonzero"] >= 3 * 5  # hierarchy: three per merge round
    assert sum(waits["stage 2"].values()) <= 4  # dense: none per mask
    markdown = (out / "bench.md").read_text()
    assert "host waits per frame, stage 2, hierarchy dense 7 masks: " in markdown
