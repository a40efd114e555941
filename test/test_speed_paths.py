"""The faster paths compute what the reference path computes: shared duplicate crops, cached
text embeddings, and bf16 on the CPU (labels as fp32 gives them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_model import TINY_CHECKPOINT, TINY_MODEL

from ovseg_ros.engine import clip_model, toy_world
from ovseg_ros.engine.classify import CropClassifier, mask_areas, unique_masks, usable_masks
from ovseg_ros.engine.clip_model import load_clip, resolve_dtype
from ovseg_ros.engine.proposals import build_proposal_generator
from ovseg_ros.engine.segmenter import SegmenterConfig, TwoStageSegmenter, build_segmenter
from ovseg_ros.engine.vocabulary import VocabularyEncoder


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip(TINY_MODEL, checkpoint=TINY_CHECKPOINT, device="cpu", precision="fp32")


def test_mask_areas_on_the_cpu_count_what_torch_counts():
    masks = torch.rand(7, 33, 45, generator=torch.Generator().manual_seed(3)) > 0.6
    masks[2] = False
    masks[4] = True
    areas = mask_areas(masks)
    assert areas.dtype == torch.int64
    assert torch.equal(areas, masks.flatten(1).sum(dim=1))
    assert areas[2] == 0 and areas[4] == 33 * 45


def test_bool_proposals_are_used_as_they_are_and_soft_ones_thresholded():
    soft = torch.tensor([[[0.2, 0.9], [0.6, 0.4]], [[0.1, 0.3], [0.2, 0.0]]])
    binary, kept = usable_masks(soft, 0.5)
    assert kept.tolist() == [0] and binary.tolist() == [[[False, True], [True, False]]]
    hard = soft > 0.15  # a threshold above 0.15 would drop pixels of both masks
    binary, kept = usable_masks(hard, 0.5)
    assert kept.tolist() == [0, 1] and torch.equal(binary, hard)


def test_unique_masks_merges_only_identical_masks():
    masks = torch.zeros(5, 40, 50, dtype=torch.bool)
    masks[0, 5:20, 5:20] = True
    masks[1, 5:20, 5:20] = True  # same as 0
    masks[2, 5:20, 5:20] = True
    masks[2, 19, 19] = False  # one pixel off 0: distinct
    masks[3, 30:35, 0:50] = True
    masks[4] = masks[3]  # same as 3
    first, inverse = unique_masks(masks)
    assert first.tolist() == [0, 2, 3]
    assert inverse.tolist() == [0, 0, 1, 2, 2]
    assert torch.equal(masks[first][inverse], masks)
    # Two equal masks that differ from their group's first only off the sampled pixels (every
    # 4th of 64 x 64) share one entry too.
    square = torch.zeros(64, 64, dtype=torch.bool)
    square[5:20, 5:20] = True
    dented = square.clone()
    dented[19, 19] = False  # flat index 1235: not a multiple of 4, not sampled
    first, inverse = unique_masks(torch.stack([square, dented, dented]))
    assert first.tolist() == [0, 1] and inverse.tolist() == [0, 1, 1]


def test_duplicate_proposals_get_the_probabilities_of_their_twin(tiny_clip):
    scene = toy_world.generate_scene(toy_world.EVAL_SEEDS.start)
    masks = torch.from_numpy(
        np.stack([scene.instances == 1, scene.instances == 0, scene.instances == 1])
    ).float()
    text = VocabularyEncoder(tiny_clip).encode(toy_world.shape_classes(), "single")
    classifier = CropClassifier(tiny_clip)
    crops = classifier.make_crops(scene.image, masks, 0.5)
    assert crops.crops.shape[0] == 2 and crops.inverse.tolist() == [0, 1, 0]
    probabilities, kept = classifier(scene.image, masks, text.text_embeddings)
    assert kept.tolist() == [0, 1, 2]
    torch.testing.assert_close(probabilities[0], probabilities[2])
    single, _ = classifier(scene.image, masks[:1], text.text_embeddings)
    torch.testing.assert_close(probabilities[0], single[0])


def test_steady_state_runs_no_text_encoder(tiny_clip):
    calls = []
    text_tower = tiny_clip.model.transformer  # open_clip's CLIP: the text transformer
    original = text_tower.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    text_tower.forward = counting_forward
    try:
        encoder = VocabularyEncoder(tiny_clip)
        segmenter = TwoStageSegmenter(tiny_clip, build_proposal_generator("superpixel"))
        vocabulary = encoder.encode(toy_world.shape_classes(), "single")
        after_first_encoding = len(calls)
        assert after_first_encoding > 0
        for seed in range(3):
            segmenter.segment(
                toy_world.generate_scene(toy_world.EVAL_SEEDS.start + seed).image, vocabulary
            )
        again = encoder.encode(toy_world.shape_classes(), "single")
        assert len(calls) == after_first_encoding  # frames and a repeated vocabulary: cached
        assert again.version == vocabulary.version + 1
        encoder.encode([*toy_world.shape_classes(), "hexagon"], "single")
        assert len(calls) == after_first_encoding + 1  # only the new name is encoded
    finally:
        del text_tower.forward


def test_precision_auto_is_fp16_on_cuda_and_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(clip_model, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(clip_model, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.float16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="'bf16' is for the CPU"):
        resolve_dtype("bf16", cuda)
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_dtype("int8", cpu)


def test_bf16_stores_the_image_tower_in_bf16_and_leaves_text_embeddings_exact(tiny_clip):
    bf16 = load_clip(TINY_MODEL, checkpoint=TINY_CHECKPOINT, device="cpu", precision="bf16")
    assert {p.dtype for p in bf16.model.visual.parameters()} == {torch.bfloat16}
    assert bf16.model.token_embedding.weight.dtype == torch.float32
    names = [f"a photo of a {name}." for name in toy_world.shape_classes()]
    assert torch.equal(bf16.encode_texts(names), tiny_clip.encode_texts(names))
    images = torch.randn(2, 3, *bf16.image_size)
    embeddings = bf16.encode_images(images)
    assert embeddings.dtype == torch.float32
    assert (
        torch.nn.functional.cosine_similarity(embeddings, tiny_clip.encode_images(images)).min()
        > 0.99
    )


@pytest.mark.parametrize("classifier", ["crop", "dense"])
def test_bf16_labels_agree_with_fp32_on_held_out_scenes(classifier):
    segmenters = {
        precision: build_segmenter(
            TINY_MODEL,
            checkpoint=TINY_CHECKPOINT,
            device="cpu",
            precision=precision,
            config=SegmenterConfig(classifier=classifier),
        )
        for precision in ("fp32", "bf16")
    }
    vocabularies = {
        precision: VocabularyEncoder(segmenter.clip).encode(toy_world.shape_classes(), "single")
        for precision, segmenter in segmenters.items()
    }
    same = total = 0
    for seed in range(toy_world.EVAL_SEEDS.start, toy_world.EVAL_SEEDS.start + 6):
        image = toy_world.generate_scene(seed).image
        labels = {
            precision: segmenter.segment(image, vocabularies[precision]).labels
            for precision, segmenter in segmenters.items()
        }
        same += int((labels["fp32"] == labels["bf16"]).sum())
        total += labels["fp32"].size
    assert same / total >= 0.995


def test_a_torch_without_the_cpu_probes_keeps_fp32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert not clip_model.cpu_has_native_bf16()
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32


@pytest.mark.slow
def test_compiled_image_tower_gives_the_eager_labels():
    """torch.compile (inductor, C++ on the CPU) of the crop path: same embeddings, same labels."""
    segmenters = [
        build_segmenter(
            TINY_MODEL,
            checkpoint=TINY_CHECKPOINT,
            device="cpu",
            precision="fp32",
            compile_image_tower=compiled,
        )
        for compiled in (False, True)
    ]
    assert type(segmenters[1].clip.model.visual).__name__ == "OptimizedModule"
    vocabulary = VocabularyEncoder(segmenters[0].clip).encode(toy_world.shape_classes(), "single")
    crops = torch.randn(5, 3, *segmenters[0].clip.image_size)
    eager, compiled = (s.clip.encode_images(crops) for s in segmenters)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    image = toy_world.generate_scene(toy_world.EVAL_SEEDS.start).image
    labels = [s.segment(image, vocabulary).labels for s in segmenters]
    assert np.array_equal(labels[0], labels[1])
