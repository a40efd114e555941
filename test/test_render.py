"""Overlay rendering: stable colors, blending, contours, names."""

from __future__ import annotations

import numpy as np
import pytest

from ovseg_ros.engine.render import class_color, class_colors, render_overlay
from ovseg_ros.engine.segmentation import UNLABELED, Segmentation, extract_segments


def _segmentation(labels: np.ndarray, class_names: list[str]) -> Segmentation:
    scores = np.ones(labels.shape, np.float32)
    segments = extract_segments(labels, scores, class_names, min_area=16)
    return Segmentation(labels, scores, class_names, 1, segments)


def test_class_colors_depend_on_the_name_only():
    first = class_colors(["person", "chair", "floor"])
    second = class_colors(["floor", "table", "person"])
    assert first.shape == (3, 3) and first.dtype == np.uint8
    assert first[0].tolist() == second[2].tolist()  # person
    assert first[2].tolist() == second[0].tolist()  # floor
    assert class_color("Person") == class_color(" person ") == tuple(first[0].tolist())
    names = ["person", "chair", "floor", "table", "door", "wall", "sofa", "window"]
    assert len({class_color(n) for n in names}) == len(names)
    assert class_colors([]).shape == (0, 3)


def test_colors_are_vivid():
    colors = class_colors([f"class {i}" for i in range(200)]).astype(int)
    assert (colors.max(axis=1) >= 190).all()  # value >= 0.75
    assert ((colors.max(axis=1) - colors.min(axis=1)) >= 0.5 * colors.max(axis=1)).all()


def test_blend_contours_and_unlabeled_pixels():
    image = np.full((120, 160, 3), 100, np.uint8)
    labels = np.full((120, 160), UNLABELED, np.uint16)
    labels[:, :60] = 0
    labels[:, 60:120] = 1
    segmentation = _segmentation(labels, ["floor", "x"])  # "x" is tiny text, still drawn
    overlay = render_overlay(image, segmentation, alpha=0.5)
    floor = np.array(class_color("floor"))
    # A pixel inside the floor, away from its contour and its name: (100 + color) / 2.
    assert overlay[5, 30].tolist() == np.round(0.5 * 100 + 0.5 * floor).astype(int).tolist()
    # Unlabeled pixels keep the image.
    assert (overlay[:, 125:] == 100).all()
    # The contour is drawn in the class color, at full opacity, along the segment's edge.
    assert overlay[60, 0].tolist() == list(floor)
    # alpha 1: the fill is the class color itself.
    assert render_overlay(image, segmentation, alpha=1.0)[5, 30].tolist() == list(floor)


def test_names_are_drawn_for_large_segments_only():
    image = np.full((480, 640, 3), 60, np.uint8)
    labels = np.full((480, 640), UNLABELED, np.uint16)
    labels[100:300, 100:400] = 0
    labels[400:405, 500:505] = 1  # 25 px: listed as a segment, too small for a name
    segmentation = _segmentation(labels, ["chair", "cup"])
    plain = render_overlay(image, _segmentation(labels, ["chair", "cup"]), alpha=0.0)
    white = (plain >= 200).all(axis=2)  # text pixels (anti-aliased), never a class color
    ys, xs = np.nonzero(white)
    # White text sits around the center of the chair box (250, 200) and nowhere else.
    assert white.sum() > 30
    assert 150 < xs.min() and xs.max() < 350 and 150 < ys.min() and ys.max() < 250
    assert not white[390:420, 480:530].any()
    assert render_overlay(image, segmentation, alpha=0.0)[0, 0].tolist() == [60, 60, 60]


def test_name_of_a_ring_sits_on_the_ring_not_in_its_hole():
    labels = np.full((200, 200), UNLABELED, np.uint16)
    ys, xs = np.mgrid[0:200, 0:200]
    radius = np.hypot(ys - 100, xs - 100)
    labels[(radius < 90) & (radius > 40)] = 0
    overlay = render_overlay(
        np.zeros((200, 200, 3), np.uint8), _segmentation(labels, ["ring"]), alpha=0.0
    )
    white_ys, white_xs = np.nonzero((overlay >= 200).all(axis=2))
    center_distance = np.hypot(white_ys.mean() - 100, white_xs.mean() - 100)
    assert 40 < center_distance < 90


def test_mismatched_sizes_and_bad_alpha_are_refused():
    segmentation = _segmentation(np.zeros((4, 4), np.uint16), ["a"])
    with pytest.raises(ValueError, match="image is"):
        render_overlay(np.zeros((5, 4, 3), np.uint8), segmentation)
    with pytest.raises(ValueError, match="alpha"):
        render_overlay(np.zeros((4, 4, 3), np.uint8), segmentation, alpha=1.5)
