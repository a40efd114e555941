"""TwoStageSegmenter: input validation, aggregation arithmetic, empty masks, ensembling,
large vocabularies, weights that do not fit."""

from __future__ import annotations

import json

import cv2
import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file
from tiny_model import TINY_MODEL

from ovseg_ros.engine.clip_model import CheckpointMismatchError, load_clip
from ovseg_ros.engine.proposals import ProposalGenerator, Proposals, build_proposal_generator
from ovseg_ros.engine.segmentation import UNLABELED
from ovseg_ros.engine.segmenter import (
    PIPELINE_SWITCH_INTERVAL_S,
    SegmenterConfig,
    ThreadSettings,
    TwoStageSegmenter,
    aggregate_scores,
    build_segmenter,
    check_image,
    pipeline_thread_settings,
)
from ovseg_ros.engine.vocabulary import VocabularyEncoder

STAGES = ["proposals", "crops", "clip_image", "aggregation", "segments"]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip(TINY_MODEL, random_weights=True, device="cpu")


@pytest.fixture(scope="module")
def encoder(clip):
    return VocabularyEncoder(clip)


class FixedProposals(ProposalGenerator):
    """Returns the masks (and scores) it was made with."""

    def __init__(self, masks, weights=None, class_scores=None, trained_classes=None) -> None:
        self.proposals = Proposals(masks, weights, class_scores, trained_classes)

    def __call__(self, image, vocabulary=None) -> Proposals:
        return self.proposals


def _image(height: int = 24, width: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_aggregation_of_a_two_by_two_example():
    # Mask 0 covers the top row, mask 1 the anti-diagonal; pixel (1, 1) is uncovered.
    masks = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    labels, scores = aggregate_scores(probabilities, masks)
    # (0, 0): mask 0 only -> class 0, 0.9. (0, 1): (0.9 + 0.2, 0.1 + 0.8) / 2 = (0.55, 0.45)
    # -> class 0, 0.55. (1, 0): mask 1 only -> class 1, 0.8.
    assert labels.tolist() == [[0, 0], [1, UNLABELED]]
    np.testing.assert_allclose(scores, [[0.9, 0.55], [0.8, 0.0]], atol=1e-6)
    # Weights 1 and 3: (0, 1) becomes (0.9 + 0.6, 0.1 + 2.4) / 4 = (0.375, 0.625) -> class 1.
    labels, scores = aggregate_scores(probabilities, masks, torch.tensor([1.0, 3.0]))
    assert labels[0, 1] == 1
    assert scores[0, 1] == pytest.approx(0.625)
    # Threshold 0.6 leaves the unweighted (0, 1) pixel (0.55) unlabeled.
    labels, _ = aggregate_scores(probabilities, masks, unlabeled_threshold=0.6)
    assert labels.tolist() == [[0, UNLABELED], [1, UNLABELED]]


def test_aggregation_of_soft_masks_normalises_by_coverage():
    masks = torch.tensor([[[0.5]], [[0.25]]])
    probabilities = torch.tensor([[0.2, 0.8], [1.0, 0.0]])
    labels, scores = aggregate_scores(probabilities, masks)
    # semseg = (0.5 * 0.2 + 0.25 * 1.0, 0.5 * 0.8) = (0.35, 0.4); coverage 0.75.
    assert labels.tolist() == [[1]]
    assert scores[0, 0] == pytest.approx(0.4 / 0.75)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_aggregation_in_chunks_matches_one_einsum(monkeypatch, dtype):
    torch.manual_seed(1)
    masks = torch.rand(6, 9, 7) > 0.5
    probabilities = torch.rand(6, 5).softmax(dim=1)
    weights = torch.rand(6) + 0.5
    semseg = torch.einsum("qc,qhw->chw", probabilities * weights[:, None], masks.float())
    coverage = torch.einsum("q,qhw->hw", weights, masks.float())
    best, expected = semseg.max(dim=0)
    expected[coverage == 0] = UNLABELED
    for chunk in (1 << 22, 6 * 7 * 2):  # the whole image at once, then two rows at a time
        monkeypatch.setattr("ovseg_ros.engine.segmenter.AGGREGATION_CHUNK", chunk)
        labels, scores = aggregate_scores(probabilities, masks.to(dtype), weights)
        np.testing.assert_array_equal(labels, expected.numpy())
        np.testing.assert_allclose(
            scores, (best / coverage.clamp(min=1e-12)).numpy() * (coverage > 0).numpy(), atol=1e-6
        )


def _resized_reference(probabilities, masks, weights, size):
    """Labels, scores and top-two margin of the full (C + 1, h, w) semseg resized with
    cv2.INTER_LINEAR (the reference's bilinear resize of class scores), then the argmax."""
    table = torch.cat([probabilities * weights[:, None], weights[:, None]], dim=1)
    semseg = torch.einsum("qk,qhw->hwk", table, masks.float()).numpy()
    resized = cv2.resize(semseg, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    classes, coverage = resized[..., :-1], resized[..., -1]
    ordered = np.sort(classes, axis=2)
    labels = classes.argmax(axis=2)
    scores = np.where(coverage > 0, ordered[..., -1] / np.maximum(coverage, 1e-12), 0)
    labels[coverage <= 0] = UNLABELED
    return labels, scores, ordered[..., -1] - ordered[..., -2]


@pytest.mark.parametrize("size", [(30, 41), (24, 23), (9, 70), (64, 96)])
def test_aggregation_at_another_size_resizes_class_scores_before_the_argmax(monkeypatch, size):
    torch.manual_seed(2)
    regions = torch.randint(0, 5, (12, 16))
    masks = torch.stack([regions == i for i in range(5)] + [torch.rand(12, 16) > 0.6])
    masks[:, :2, :3] = False  # an uncovered corner
    probabilities = torch.rand(6, 4).softmax(dim=1)
    weights = torch.rand(6) + 0.5
    expected, expected_scores, margin = _resized_reference(probabilities, masks, weights, size)
    clear = margin > 1e-5  # pixels whose argmax rounding cannot flip
    for chunk in (1 << 22, 5 * 16 * 3):  # all rows at once, then blocks of two source rows
        monkeypatch.setattr("ovseg_ros.engine.segmenter.AGGREGATION_CHUNK", chunk)
        labels, scores = aggregate_scores(probabilities, masks, weights, output_size=size)
        assert labels.shape == scores.shape == size
        np.testing.assert_array_equal(labels[clear], expected[clear])
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert clear.mean() > 0.95


def test_masks_with_nan_or_infinite_probabilities_are_left_out():
    masks = torch.zeros((3, 2, 3), dtype=torch.bool)
    masks[0, :, :2] = True
    masks[1, :, 1:] = True
    masks[2, :, 2] = True
    probabilities = torch.tensor([[0.7, 0.3], [float("nan"), 0.5], [float("inf"), 0.0]])
    for size in (None, (4, 6)):
        labels, scores = aggregate_scores(probabilities, masks, output_size=size)
        assert np.isfinite(scores).all()
        assert (labels[:, 0] == 0).all()  # mask 0 alone
        assert (labels[:, -1] == UNLABELED).all()  # masks 1 and 2 alone
        np.testing.assert_allclose(scores[:, 0], 0.7, atol=1e-6)


def test_nan_embeddings_give_finite_scores_and_segments(clip, encoder, monkeypatch):
    vocabulary = encoder.encode(["a", "b", "c"], "single")
    masks = torch.zeros((2, 16, 16), dtype=torch.bool)
    masks[0, :, :8] = True
    masks[1, :, 8:] = True
    segmenter = TwoStageSegmenter(clip, FixedProposals(masks))
    embed = segmenter.classifier.embed

    def overflowed(crops, batch_size):  # as an fp16 overflow in the image tower would give
        embeddings = embed(crops, batch_size)
        embeddings[1] = float("nan")
        return embeddings

    monkeypatch.setattr(segmenter.classifier, "embed", overflowed)
    result = segmenter.segment(_image(16, 16), vocabulary)
    assert np.isfinite(result.scores).all()
    assert (result.labels[:, 8:] == UNLABELED).all() and (result.labels[:, :8] != UNLABELED).all()
    assert all(np.isfinite(s.score) for s in result.segments) and len(result.segments) == 1


class SeenSizes(ProposalGenerator):
    """Superpixel proposals that record the size of every image they are given."""

    def __init__(self) -> None:
        self.inner = build_proposal_generator("superpixel", max_proposals=20)
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, image, vocabulary=None) -> Proposals:
        self.sizes.append(image.shape[:2])
        return self.inner(image, vocabulary)


@pytest.mark.parametrize("classifier", ["crop", "dense"])
def test_a_large_image_is_processed_small_and_comes_back_at_its_size(clip, encoder, classifier):
    vocabulary = encoder.encode(["circle", "square", "background"], "single")
    generator = SeenSizes()
    config = SegmenterConfig(classifier=classifier, processing_size="48")
    segmenter = TwoStageSegmenter(clip, generator, config)
    image = cv2.resize(_image(24, 32), (100, 75), interpolation=cv2.INTER_NEAREST)
    result = segmenter.segment(image, vocabulary)
    assert generator.sizes == [(36, 48)]
    assert list(result.timings_ms) == ["resize", *STAGES]
    assert result.labels.shape == result.scores.shape == (75, 100)
    assert np.isfinite(result.scores).all() and (result.labels != UNLABELED).all()
    assert sum(s.area for s in result.segments) <= 75 * 100
    for segment in result.segments:
        x, y, w, h = segment.box
        assert segment.mask.shape == (h, w) and x + w <= 100 and y + h <= 75
        assert (result.labels[y : y + h, x : x + w][segment.mask] == segment.class_id).all()
    # Stage 1 apart (the node's pipeline) sees the same small image and gives the same result.
    proposals = segmenter.propose(image, vocabulary)
    assert tuple(proposals.masks.shape[1:]) == (36, 48)
    apart = segmenter.segment(image, vocabulary, proposals)
    np.testing.assert_array_equal(apart.labels, result.labels)
    np.testing.assert_array_equal(apart.scores, result.scores)
    # Proposals of another processing size are refused.
    segmenter.config.processing_size = "0"
    with pytest.raises(ValueError, match=r"masks are \(36, 48\) but this 75x100 image"):
        segmenter.segment(image, vocabulary, proposals)
    native = segmenter.segment(image, vocabulary)
    assert "resize" not in native.timings_ms and generator.sizes[-1] == (75, 100)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ([[[0, 0, 0]]], "numpy array, got list"),
        (np.zeros((4, 4), np.uint8), "got shape (4, 4); convert grayscale"),
        (np.zeros((4, 4, 4), np.uint8), "RGBA"),
        (np.zeros((4, 4, 1), np.uint8), "(H, W, 3) RGB image"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((4, 0, 3), np.uint8), "empty"),
        (np.zeros((4, 4, 3), np.float32), "dtype float32; convert"),
        (np.full((4, 4, 3), np.nan, np.float32), "containing NaN"),
        (np.zeros((4, 4, 3), np.uint16), "dtype uint16"),
    ],
)
def test_bad_images_are_refused_with_the_reason(clip, encoder, image, message):
    with pytest.raises(ValueError) as error:
        check_image(image)
    assert message in str(error.value)
    segmenter = TwoStageSegmenter(clip, build_proposal_generator("superpixel"))
    with pytest.raises(ValueError):
        segmenter.segment(image, encoder.encode(["a", "b"], "single"))


def test_one_pixel_image_is_segmented(clip, encoder):
    segmenter = TwoStageSegmenter(clip, build_proposal_generator("superpixel"))
    result = segmenter.segment(np.full((1, 1, 3), 200, np.uint8), encoder.encode(["a", "b"]))
    assert result.labels.shape == (1, 1) and result.labels.dtype == np.uint16
    assert result.labels[0, 0] in (0, 1)
    assert len(result.segments) == 0  # below min_segment_area


def test_a_flipped_view_segments_like_a_contiguous_copy(clip, encoder):
    vocabulary = encoder.encode(["a", "b", "c"], "single")
    segmenter = TwoStageSegmenter(clip, build_proposal_generator("superpixel"))
    bgr = np.ascontiguousarray(_image()[..., ::-1])
    view = bgr[..., ::-1]  # RGB again, as a negative-stride view
    expected = segmenter.segment(np.ascontiguousarray(view), vocabulary)
    np.testing.assert_array_equal(segmenter.segment(view, vocabulary).labels, expected.labels)


def test_result_carries_the_vocabulary_and_stage_timings(clip, encoder):
    vocabulary = encoder.encode(["circle", "square", "background"], "single")
    segmenter = TwoStageSegmenter(clip, build_proposal_generator("superpixel"))
    result = segmenter.segment(_image(), vocabulary)
    assert result.class_names == ["circle", "square", "background"]
    assert result.vocabulary_version == vocabulary.version
    assert list(result.timings_ms) == STAGES
    assert all(ms >= 0 for ms in result.timings_ms.values())
    assert result.labels.shape == (24, 32) and result.scores.dtype == np.float32
    assert set(np.unique(result.labels)) <= {0, 1, 2}
    assert ((result.scores >= 1 / 3 - 1e-6) & (result.scores <= 1 + 1e-6)).all()
    assert sum(s.area for s in result.segments) <= 24 * 32


@pytest.mark.parametrize("classifier", ["crop", "dense"])
def test_stage_one_run_apart_gives_the_same_result(clip, encoder, classifier):
    vocabulary = encoder.encode(["circle", "square", "background"], "single")
    segmenter = TwoStageSegmenter(
        clip, build_proposal_generator("superpixel"), SegmenterConfig(classifier=classifier)
    )
    whole = segmenter.segment(_image(), vocabulary)
    proposals = segmenter.propose(_image(), vocabulary)
    apart = segmenter.segment(_image(), vocabulary, proposals)
    np.testing.assert_array_equal(apart.labels, whole.labels)
    np.testing.assert_array_equal(apart.scores, whole.scores)
    assert list(apart.timings_ms) == STAGES[1:]
    with pytest.raises(ValueError, match="uint8"):
        segmenter.propose(_image().astype(np.float32), vocabulary)


@pytest.mark.parametrize("classifier", ["crop", "dense"])
def test_a_batch_of_cameras_segments_each_frame_as_alone(clip, encoder, classifier):
    """Frames of several cameras (two of one size, one of another, one given its proposals)
    in one segment_batch: each result equals segment() of that frame alone."""
    vocabulary = encoder.encode(["circle", "square", "background"], "single")
    segmenter = TwoStageSegmenter(
        clip, build_proposal_generator("superpixel"), SegmenterConfig(classifier=classifier)
    )
    rng = np.random.default_rng(3)
    images = [
        rng.integers(0, 256, shape, dtype=np.uint8)
        for shape in ((24, 32, 3), (24, 32, 3), (30, 20, 3))
    ]
    given = [None, segmenter.propose(images[1], vocabulary), None]
    batch = segmenter.segment_batch(images, vocabulary, given)
    assert len(batch) == 3
    for image, result in zip(images, batch, strict=True):
        alone = segmenter.segment(image, vocabulary)
        assert result.labels.shape == image.shape[:2]
        np.testing.assert_array_equal(result.labels, alone.labels)
        np.testing.assert_allclose(result.scores, alone.scores, atol=1e-5)
    assert list(batch[0].timings_ms) == STAGES
    assert list(batch[1].timings_ms) == STAGES[1:]
    assert batch[0].timings_ms["clip_image"] == batch[1].timings_ms["clip_image"]
    with pytest.raises(ValueError, match="2 images but 1 proposal"):
        segmenter.segment_batch(images[:2], vocabulary, [None])
    assert segmenter.segment_batch([], vocabulary) == []


def test_pipeline_thread_settings_leave_stage_one_a_core_and_apply_and_restore():
    assert pipeline_thread_settings(ThreadSettings(4, 0.005)) == ThreadSettings(
        3, PIPELINE_SWITCH_INTERVAL_S
    )
    assert pipeline_thread_settings(ThreadSettings(1, 0.005)).torch_threads == 1
    before = ThreadSettings.current()
    try:
        ThreadSettings(1, 0.002).apply()
        assert ThreadSettings.current() == ThreadSettings(1, 0.002)
    finally:
        before.apply()
    assert ThreadSettings.current() == before


def test_masks_empty_after_the_threshold_are_dropped(clip, encoder):
    vocabulary = encoder.encode(["a", "b", "c"], "single")
    full = torch.ones((1, 10, 12))
    faint = torch.full((1, 10, 12), 0.3)  # empty once binarised at 0.5
    masks = torch.cat([full, faint, torch.zeros((1, 10, 12))])
    segmenter = TwoStageSegmenter(clip, FixedProposals(masks))
    result = segmenter.segment(_image(10, 12), vocabulary)
    only_full = TwoStageSegmenter(clip, FixedProposals(full)).segment(_image(10, 12), vocabulary)
    np.testing.assert_array_equal(result.labels, only_full.labels)
    np.testing.assert_allclose(result.scores, only_full.scores)
    # With every mask empty, nothing is labeled.
    segmenter.proposals = FixedProposals(torch.zeros((2, 10, 12)))
    empty = segmenter.segment(_image(10, 12), vocabulary)
    assert (empty.labels == UNLABELED).all() and empty.segments == []


def test_proposal_class_scores_are_ensembled(clip, encoder):
    vocabulary = encoder.encode(["a", "b", "c"], "single")
    masks = torch.zeros((2, 8, 8))
    masks[0, :, :4] = 1.0
    masks[1, :, 4:] = 1.0
    scores = torch.tensor([[0.1, 0.1, 0.8], [0.7, 0.2, 0.1]])
    # lambda = 1 with every class trained: p = p_net, whatever CLIP says.
    generator = FixedProposals(masks, class_scores=scores, trained_classes=torch.ones(3) > 0)
    segmenter = TwoStageSegmenter(clip, generator, SegmenterConfig(ensemble_weight=1.0))
    result = segmenter.segment(_image(8, 8), vocabulary)
    assert (result.labels[:, :4] == 2).all() and (result.labels[:, 4:] == 0).all()
    np.testing.assert_allclose(result.scores[:, :4], 0.8, atol=1e-6)


def test_a_thousand_class_vocabulary_works(clip):
    encoder = VocabularyEncoder(clip, prompts_per_batch=500)
    vocabulary = encoder.encode([f"thing {i}" for i in range(1000)], "single")
    segmenter = TwoStageSegmenter(clip, build_proposal_generator("superpixel"))
    result = segmenter.segment(_image(48, 64), vocabulary)
    assert len(result.class_names) == 1000
    assert result.labels.max() < 1000


def test_vocabulary_of_another_model_is_refused(clip, encoder):
    vocabulary = encoder.encode(["a", "b"], "single")
    other = type(vocabulary)(
        version=vocabulary.version,
        class_names=vocabulary.class_names,
        synonyms=vocabulary.synonyms,
        templates=vocabulary.templates,
        text_embeddings=torch.ones((2, 512)),
    )
    segmenter = TwoStageSegmenter(clip, build_proposal_generator("superpixel"))
    with pytest.raises(ValueError, match="512 dimensions but ovseg-tiny-clip embeds into 64"):
        segmenter.segment(_image(), other)


def test_no_classes_is_a_clear_error(encoder):
    with pytest.raises(ValueError, match="the vocabulary is empty"):
        encoder.encode([], "single")


def test_checkpoint_of_another_architecture_lists_the_mismatch(tmp_path):
    config = open_clip.get_model_config(TINY_MODEL)
    config["vision_cfg"]["width"] = 64  # another width
    config["vision_cfg"]["layers"] = 3  # and one block fewer
    path = tmp_path / "test-other-tiny-clip.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    other = open_clip.create_model("test-other-tiny-clip", pretrained=None, device="cpu")
    checkpoint = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(checkpoint))
    with pytest.raises(CheckpointMismatchError) as error:
        build_segmenter(TINY_MODEL, checkpoint=checkpoint, device="cpu")
    message = str(error.value)
    assert "does not match the architecture" in message
    assert "missing (" in message and "visual.transformer.resblocks.3." in message
    assert "shape mismatch (" in message and "visual.conv1.weight" in message
