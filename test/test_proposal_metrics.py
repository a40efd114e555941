"""Class-agnostic proposal figures: known IoUs, empty proposals, processing size, void pixels,
stage 1 alone (evaluate_proposals), and `ovseg eval --proposals-only`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_model import TINY_CHECKPOINT

from ovseg_ros.cli import main
from ovseg_ros.engine import toy_world
from ovseg_ros.engine.datasets import Sample
from ovseg_ros.engine.evaluate import Evaluation, evaluate_proposals, metrics_markdown
from ovseg_ros.engine.proposal_metrics import (
    ProposalStats,
    best_iou_per_instance,
    best_ious,
    resize_instances,
)
from ovseg_ros.engine.proposals import ProposalGenerator, Proposals
from ovseg_ros.engine.resize import ProcessingSize

MODEL = ["--checkpoint", str(TINY_CHECKPOINT), "--device", "cpu"]

# Two objects of 5 pixels each: object 1 on row 0, object 2 on row 1 (columns 0-4).
INSTANCES = np.zeros((3, 8), dtype=np.int32)
INSTANCES[0, :5] = 1
INSTANCES[1, :5] = 2


def masks(*rows_and_columns: tuple[int, slice]) -> torch.Tensor:
    """(N, 3, 8) bool masks, one per (row, columns)."""
    out = torch.zeros((len(rows_and_columns), 3, 8), dtype=torch.bool)
    for i, (row, columns) in enumerate(rows_and_columns):
        out[i, row, columns] = True
    return out


def test_one_object_exact_the_other_at_iou_0_6():
    proposals = masks((0, slice(0, 5)), (1, slice(0, 3)), (2, slice(0, 8)))
    ids, ious = best_ious(proposals, INSTANCES)
    assert list(ids) == [1, 2]
    assert ious == pytest.approx([1.0, 0.6])
    stats = ProposalStats()
    stats.add(proposals, INSTANCES, stage1_ms=12.0)
    figures = stats.figures()
    assert figures.mean_best_iou == pytest.approx(0.8)
    assert figures.recall_50 == 1.0 and figures.recall_75 == 0.5
    assert (figures.num_objects, figures.num_images) == (2, 1)
    assert figures.proposals_per_frame == 3.0 and figures.stage1_ms == 12.0
    assert figures.to_dict()["recall_75"] == 0.5
    assert figures.summary() == (
        "proposals: mean best IoU 0.800, recall@0.5 1.00, recall@0.75 0.50, 3.0 per frame, "
        "stage 1 12.0 ms (2 objects)"
    )


def test_a_larger_proposal_counts_its_extra_pixels():
    # 5 object pixels inside a 10-pixel mask: IoU 0.5; the void pixel counts for nobody.
    proposals = masks((0, slice(0, 8)))
    proposals[0, 1, :2] = True
    assert best_iou_per_instance(proposals, INSTANCES)[0] == pytest.approx(0.5)
    void = INSTANCES.copy()
    void[0, 5:8] = -1
    assert best_iou_per_instance(proposals, void)[0] == pytest.approx(5 / 7)


def test_soft_masks_are_binarised_at_one_half():
    soft = torch.zeros((1, 3, 8))
    soft[0, 0, :5] = 0.6
    soft[0, 1, :5] = 0.4
    assert best_iou_per_instance(soft, INSTANCES) == pytest.approx([1.0, 0.0])
    assert best_iou_per_instance(soft.half(), INSTANCES) == pytest.approx([1.0, 0.0])


def test_empty_proposals_and_no_objects():
    empty = torch.zeros((0, 3, 8), dtype=torch.bool)
    assert best_iou_per_instance(empty, INSTANCES) == [0.0, 0.0]
    stats = ProposalStats()
    stats.add(empty, INSTANCES, 1.0)
    figures = stats.figures()
    assert (figures.mean_best_iou, figures.recall_50, figures.proposals_per_frame) == (0, 0, 0)
    nothing = ProposalStats()
    nothing.add(masks((0, slice(0, 2))), np.zeros((3, 8), dtype=np.int32))
    figures = nothing.figures()
    assert figures.num_objects == 0 and math.isnan(figures.mean_best_iou)
    assert figures.to_dict()["mean_best_iou"] is None and figures.to_dict()["stage1_ms"] is None
    json.dumps(figures.to_dict(), allow_nan=False)


def test_instances_are_resized_to_the_processing_size():
    # Objects of 2x2 blocks at (6, 8); proposals at (3, 4) cover their halved blocks exactly.
    full = np.zeros((6, 8), dtype=np.int32)
    full[0:2, 0:2] = 1
    full[2:6, 4:8] = 2
    np.testing.assert_array_equal(resize_instances(full, 3, 4), full[::2, ::2])
    small = torch.zeros((2, 3, 4), dtype=torch.bool)
    small[0, 0, 0] = True
    small[1, 1:3, 2:4] = True
    assert best_iou_per_instance(small, full) == pytest.approx([1.0, 1.0])
    # An object lost in the downscale is a miss, not forgotten.
    full[5, 0] = 3
    assert best_iou_per_instance(small, full) == pytest.approx([1.0, 1.0, 0.0])


def test_matching_is_chunked_without_changing_the_answer(monkeypatch):
    rng = np.random.default_rng(0)
    instances = rng.integers(0, 5, (20, 30)).astype(np.int32)
    proposals = torch.from_numpy(rng.random((9, 20, 30)) > 0.5)
    whole = best_ious(proposals, instances)[1]
    monkeypatch.setattr("ovseg_ros.engine.proposal_metrics._CHUNK_ELEMENTS", 1000)
    np.testing.assert_allclose(best_ious(proposals, instances)[1], whole)
    for k, iou in zip(range(1, 5), whole, strict=True):  # against a plain per-object loop
        target = torch.from_numpy(instances == k)
        inter = (proposals & target).flatten(1).sum(1)
        union = (proposals | target).flatten(1).sum(1)
        assert iou == pytest.approx(float((inter / union).max()))


class FixedProposals(ProposalGenerator):
    """Proposes the image's own top half and records the sizes it was given."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, image, vocabulary=None) -> Proposals:
        height, width = image.shape[:2]
        self.sizes.append((height, width))
        mask = torch.zeros((1, height, width), dtype=torch.bool)
        mask[0, : height // 2] = True
        return Proposals(masks=mask)


def test_evaluate_proposals_runs_stage_one_alone():
    instances = np.zeros((40, 60), dtype=np.int32)
    instances[:20] = 1
    instances[30:, 50:] = 2
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    samples = [Sample(image, None, f"s{i}", instances) for i in range(3)]
    generator = FixedProposals()
    evaluation = evaluate_proposals(generator, samples, processing_size="30")
    assert generator.sizes == [(20, 30)] * 3
    assert evaluation.metrics is None and evaluation.num_images == 3
    figures = evaluation.proposals
    assert figures.num_objects == 6 and figures.mean_best_iou == pytest.approx(0.5)
    assert figures.recall_50 == 0.5 and figures.proposals_per_frame == 1.0
    assert list(evaluation.mean_timings_ms) == ["proposals"]
    markdown = metrics_markdown(evaluation, "stage 1", {"dataset": "hand-made"})
    assert "| mean best IoU | 0.500 |" in markdown and "| objects | 6 |" in markdown
    assert "mIoU" not in markdown
    with pytest.raises(ValueError, match="s9 has no instance map"):
        evaluate_proposals(generator, [Sample(image, None, "s9")])
    # An enlarged processing image: the instance maps are enlarged to match (same figures).
    enlarged = evaluate_proposals(
        generator, samples[:1], processing_size=ProcessingSize("short", 80)
    )
    assert generator.sizes[-1] == (80, 120)
    assert enlarged.proposals.mean_best_iou == pytest.approx(0.5)


def test_eval_proposals_only_prints_the_figures(tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "toy:photo", "--limit", "2", "--proposals-only", "--out", str(out)]
    assert main([*args, *MODEL]) == 0
    stdout = capsys.readouterr().out
    assert "proposals: mean best IoU" in stdout and "recall@0.75" in stdout
    assert "mIoU" not in stdout
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"] is None and report["num_images"] == 2
    assert 0.0 <= report["proposals"]["mean_best_iou"] <= 1.0
    assert report["proposals"]["num_images"] == 2
    assert "| recall@0.5 |" in (out / "metrics.md").read_text()


def test_full_eval_of_the_photo_world_reports_both_stages(tmp_path, capsys):
    """Stage 1 runs at the processing size (long side 160): the instance maps are downscaled to
    match.
    The tiny CLIP never saw "blob": a note, not an error."""
    out = tmp_path / "eval"
    args = ["eval", "toy:photo", "--limit", "1", "--processing-size", "160", "--out", str(out)]
    assert main([*args, *MODEL]) == 0
    captured = capsys.readouterr()
    assert "mIoU " in captured.out and "proposals: mean best IoU" in captured.out
    assert "note:" in captured.err and "blob" in captured.err
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["metrics"]["iou"]) == {"background", "blob", *toy_world.SHAPES}
    assert report["proposals"]["num_objects"] >= 1
    assert list(report["mean_timings_ms"])[0] == "proposals"


def test_eval_of_a_folder_of_instances_only(tmp_path, capsys):
    """Own photos with instance masks, no labels: proposal figures only."""
    (tmp_path / "images").mkdir()
    (tmp_path / "instances").mkdir()
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[8:30, 10:40] = (220, 40, 40)
    instances = np.zeros((48, 64), dtype=np.uint16)
    instances[8:30, 10:40] = 300  # a 16-bit object id
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    Image.fromarray(instances).save(tmp_path / "instances" / "a.png")
    out = tmp_path / "eval"
    assert main(["eval", str(tmp_path), "--out", str(out), *MODEL]) == 0
    captured = capsys.readouterr()
    assert "proposal figures only" in captured.err
    assert "(1 objects)" in captured.out
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"] is None and report["proposals"]["num_objects"] == 1
    assert report["proposals"]["mean_best_iou"] > 0.9  # a flat red box on black


def test_evaluation_keeps_its_constructor():
    assert Evaluation(metrics=None, num_images=0).proposals is None
