"""Open-set evaluation (engine/open_set.py): hidden subsets, pixel counts, AUROC, the table."""

import json
from dataclasses import dataclass

import numpy as np
import pytest

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.datasets import ToyWorldDataset
from ovseg_ros.engine.open_set import (
    DEFAULT_STRENGTHS,
    HiddenSubset,
    OpenSetAccumulator,
    evaluate_open_set,
    hidden_subsets,
    histogram_auroc,
    operating_points_markdown,
    truth_in_vocabulary,
)
from ovseg_ros.engine.segmentation import UNLABELED


def test_hidden_subsets_are_fixed_by_seed():
    subsets = hidden_subsets(toy_world.shape_classes(), count=3, size=2, seed=0)
    assert [s.hidden for s in subsets] == [
        ("star", "ring"),
        ("square", "cross"),
        ("circle", "cross"),
    ]
    assert subsets[0].visible == ("background", "circle", "square", "triangle", "cross")
    assert hidden_subsets(toy_world.shape_classes(), seed=0) == subsets
    assert hidden_subsets(toy_world.shape_classes(), seed=1) != subsets
    colors = hidden_subsets(toy_world.color_classes(), count=21, size=2, seed=5)
    assert len(set(colors)) == 21  # every pair once, background never
    assert all("background" in s.visible for s in colors)


def test_hidden_subsets_refuse_impossible_requests():
    with pytest.raises(ValueError, match="only 15 exist"):
        hidden_subsets(toy_world.shape_classes(), count=16, size=2)
    with pytest.raises(ValueError, match="cannot hide"):
        hidden_subsets(["background", "circle"], count=1, size=2)


def test_truth_in_vocabulary():
    subset = HiddenSubset(hidden=("b",), visible=("a", "c"))
    label = np.array([[0, 1, 2, 255]])
    assert truth_in_vocabulary(label, ["a", "b", "c"], subset, 255).tolist() == [[0, 2, 1, -1]]


def test_auroc_on_a_hand_made_map():
    accumulator = OpenSetAccumulator(num_visible=1, strengths=(0.0, 0.5))
    known = np.array([[0.9, 0.8, 0.1, 0.85]], np.float32)
    truth = np.array([[0, 0, 1, 1]])  # two visible pixels, two hidden
    labels = np.zeros((1, 4), np.uint16)
    accumulator.add(labels, known, truth)
    # Pairs (visible above hidden): 0.9 > 0.1, 0.9 > 0.85, 0.8 > 0.1; 0.8 < 0.85: 3 of 4.
    assert accumulator.auroc() == pytest.approx(0.75)
    at_half = accumulator.points()[1]
    assert at_half.hidden_rejected == 0.5 and at_half.known_kept == 1.0
    assert histogram_auroc(np.array([0, 2, 0]), np.array([0, 2, 0])) == 0.5  # ties
    assert np.isnan(histogram_auroc(np.array([1, 0]), np.array([0, 0])))


@dataclass
class FakeResult:
    labels: np.ndarray
    known: np.ndarray


@dataclass
class FakeConfig:
    known_map: bool = False
    rejection: float = 0.3


class OracleSegmenter:
    """Labels every visible pixel right and every hidden one as the vocabulary's class 0, with
    known = 1 on visible pixels and 0.2 on hidden ones (ground truth from the toy scenes)."""

    def __init__(self, dataset: ToyWorldDataset) -> None:
        self.dataset = dataset
        self.config = FakeConfig()
        self.seen_config: list[tuple[bool, float]] = []

    def segment(self, image, vocabulary):
        self.seen_config.append((self.config.known_map, self.config.rejection))
        sample = next(s for s in self.dataset if np.array_equal(s.image, image))
        subset = HiddenSubset(
            hidden=tuple(n for n in self.dataset.class_names if n not in vocabulary),
            visible=tuple(vocabulary),
        )
        truth = truth_in_vocabulary(sample.label, self.dataset.class_names, subset, 255)
        hidden = truth == len(vocabulary)
        labels = np.where(hidden, 0, truth).astype(np.uint16)
        labels[0, 0] = UNLABELED if not hidden[0, 0] else labels[0, 0]
        return FakeResult(labels=labels, known=np.where(hidden, 0.2, 1.0).astype(np.float32))


def test_known_counts_of_hidden_pixels_on_toy_scenes():
    dataset = ToyWorldDataset("shape", seeds=[1_000_000])
    # Scene 1_000_000 shows a cross (2800 px), a ring (6889 px) and a triangle (724 px).
    counts = np.bincount(dataset[0].label.ravel(), minlength=7)
    assert counts.tolist() == [66387, 0, 0, 724, 0, 6889, 2800]
    subset = HiddenSubset(
        hidden=("ring", "cross"), visible=("background", "circle", "square", "triangle", "star")
    )
    segmenter = OracleSegmenter(dataset)
    evaluation = evaluate_open_set(
        segmenter,
        lambda names: names,  # the oracle's "vocabulary" is its list of names
        dataset,
        dataset.class_names,
        dataset.ignore_index,
        [subset],
        strengths=(0.0, 0.5),
    )
    assert segmenter.seen_config == [(True, 0.0)]
    assert (segmenter.config.known_map, segmenter.config.rejection) == (False, 0.3)
    result = evaluation.subsets[0]
    assert result.hidden_pixels == 6889 + 2800
    assert result.known_pixels == 66387 + 724
    assert result.auroc == 1.0
    without, with_rejection = result.points
    assert without.hidden_rejected == 0.0 and with_rejection.hidden_rejected == 1.0
    # Pixel (0, 0) is background, left unlabeled: a known pixel without label at every strength.
    assert without.known_kept == with_rejection.known_kept == pytest.approx(1 - 1 / 67111)
    # Without rejection the hidden pixels are false "background"; with it only (0, 0) is missed.
    background_iou = (66387 - 1) / (66387 + 9689)
    assert without.miou == pytest.approx((background_iou + 1.0) / 2)
    assert with_rejection.miou == pytest.approx(((66387 - 1) / 66387 + 1.0) / 2)
    assert with_rejection.unknown_iou == pytest.approx(9689 / 9690)
    assert evaluation.points[1].hidden_rejected == 1.0 and evaluation.num_images == 1


def test_operating_point_table():
    dataset = ToyWorldDataset("shape", seeds=[1_000_000])
    evaluation = evaluate_open_set(
        OracleSegmenter(dataset),
        lambda names: names,
        dataset,
        dataset.class_names,
        dataset.ignore_index,
        hidden_subsets(dataset.class_names, count=2, seed=0),
        strengths=(0.0, 0.5),
    )
    table = operating_points_markdown(evaluation, recommended=0.5).splitlines()
    assert table[0].startswith("AUROC known vs hidden pixels: 1.000 (mean of 2 subsets")
    assert table[2] == "| strength | hidden -> unknown | known kept | in-vocab mIoU | unknown IoU |"
    assert table[4].startswith("| 0 | 0.0 |")
    assert table[5].startswith("| 0.5 (recommended) | 100.0 | 100.0 |")
    assert len(table) == 6


def test_ovseg_eval_open_set_writes_the_operating_points(tmp_path):
    from ovseg_ros.cli import main

    out = tmp_path / "out"
    args = ["eval", "toy:shape", "--open-set", "--limit", "4", "--hidden-subsets", "1",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "open_set.json").read_text())
    evaluation = report["open_set"]
    assert [p["strength"] for p in evaluation["points"]] == list(DEFAULT_STRENGTHS)
    assert 0.0 <= evaluation["auroc"] <= 1.0 and evaluation["num_images"] == 4
    (subset,) = evaluation["subsets"]
    assert subset["hidden_pixels"] > 0  # star and ring, in the first 4 held-out scenes
    assert evaluation["points"][0]["hidden_rejected"] == 0.0  # strength 0 rejects nothing
    assert len(subset["subset"]["hidden"]) == 2 and "background" not in subset["subset"]["hidden"]
    assert "rejection" not in report["settings"]
    assert "| 0.5 (recommended) |" in (out / "open_set.md").read_text()
