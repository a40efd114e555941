"""The reference's inference settings: the table per setting, learned prompts in stage 2 equal to
the class head's, a separate stage-2 adapter's prompts, the reference's single template, and
every non-empty mask classified with min_proposal_area 1."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from test_maskformer_checkpoint import REFERENCE_LIKE, reference_name

from ovseg_ros.cli import build_parser, main, preset_defaults
from ovseg_ros.engine.classify import CropClassifier
from ovseg_ros.engine.maskformer.learned_prompts import encode_with_learned_prompts
from ovseg_ros.engine.maskformer.model import MaskFormer
from ovseg_ros.engine.paper import PAPER_SETTINGS, check_checkpoint, paper_setting
from ovseg_ros.engine.prompts import LEARNED, resolve_templates
from ovseg_ros.engine.proposals.base import Proposals
from ovseg_ros.engine.segmenter import SegmenterConfig, TwoStageSegmenter, build_segmenter
from ovseg_ros.engine.vocabulary import VocabularyEncoder

NAMES = ["red circle", "star|pentagram", "checkerboard background"]
TINY_EMBED_DIM = 64
"""Width of the tiny CLIP's joint embedding and of its text tower's token embeddings."""


def test_settings_follow_the_reference_configs():
    coco = paper_setting("coco-stuff-156").settings()
    assert coco["processing_size"] == "short:640:2560"
    assert coco["prompt_templates"] == [LEARNED]
    assert (coco["ensemble_weight"], coco["mask_threshold"]) == (0.8, 0.5)
    ade = paper_setting("ade20k-150").settings()
    assert ade["processing_size"] == "short:512:2048"
    assert ade["prompt_templates"] == ["vild14"]
    assert (ade["ensemble_weight"], ade["mask_threshold"]) == (0.5, 0.4)
    assert paper_setting("pcontext-59").settings()["ensemble_weight"] == 0.4
    for setting in PAPER_SETTINGS.values():
        values = setting.settings()
        assert values["min_proposal_area"] == 1
        assert values["precision"] == "fp32"
        assert values["proposal_generator"] == "maskformer"
        assert values["classifier"] == "crop"


def test_seen_classes_come_from_the_test_sets_split():
    assert len(paper_setting("coco-stuff-156").trained_classes) == 156
    assert "giraffe" not in paper_setting("coco-stuff-156-single").trained_classes
    voc = paper_setting("voc-15")
    assert len(voc.trained_classes) == 15 and "sheep" not in voc.trained_classes
    assert (voc.head_prompts, voc.stage_two_prompts) == ("sculpture", LEARNED)
    assert paper_setting("voc-20").trained_classes == voc.trained_classes
    assert paper_setting("ade20k-150").trained_classes is None


def test_unknown_setting_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: coco-stuff-156, "):
        paper_setting("coco")


def test_the_references_single_template():
    assert resolve_templates("sculpture") == ("a sculpture of a {}.",)
    assert resolve_templates(LEARNED) == (LEARNED,)
    with pytest.raises(ValueError, match="cannot be mixed"):
        resolve_templates([LEARNED, "vild14"])


def write_reference_checkpoint(path, region_prompts: bool) -> dict[str, torch.Tensor]:
    """A zsseg-style .pth of a small MaskFormer whose class head embeds into the tiny CLIP's
    space, with learned prompts (4 prefix vectors: the tiny CLIP reads 16 tokens) for the head
    and, with region_prompts, other ones for a separate stage-2 adapter. Returns the prompt
    tensors by reference key."""
    torch.manual_seed(0)
    config = dataclasses.replace(REFERENCE_LIKE, embedding_dim=TINY_EMBED_DIM)
    state = {reference_name(k): v for k, v in MaskFormer(config).eval().state_dict().items()}
    width = TINY_EMBED_DIM
    prompts = {"clip_adapter.prompt_learner.prefix_prompt": 0.02 * torch.randn(4, width)}
    if region_prompts:
        region = "_region_clip_adapter."
        prompts[region + "prompt_learner.prefix_prompt"] = 0.02 * torch.randn(4, width)
        state[region + "clip_model.positional_embedding"] = torch.zeros(16, width)
        state[region + "non_object_embedding"] = torch.zeros(1, width)
    torch.save({"model": {**state, **prompts}}, path)
    return prompts


def build(path, **settings) -> TwoStageSegmenter:
    return build_segmenter(
        "ovseg-tiny-clip", random_weights=True, device="cpu", precision="fp32",
        proposal_generator="maskformer", proposal_checkpoint=path, **settings,
    )  # fmt: skip


def test_learned_prompts_are_the_same_in_both_stages(tmp_path):
    path = tmp_path / "model_final.pth"
    prompts = write_reference_checkpoint(path, region_prompts=False)
    segmenter = build(path)
    encoder = VocabularyEncoder(segmenter.clip, learned=segmenter.learned_text)
    vocabulary = encoder.encode(NAMES, LEARNED)
    head = segmenter.proposals.text_embeddings(vocabulary)
    torch.testing.assert_close(vocabulary.text_embeddings, head)
    prefix = prompts["clip_adapter.prompt_learner.prefix_prompt"]
    direct = encode_with_learned_prompts(
        segmenter.clip, segmenter.proposals.loaded.prompts, ["red circle"]
    )
    torch.testing.assert_close(vocabulary.text_embeddings[0], direct[0])
    assert torch.equal(segmenter.proposals.loaded.prompts.prefix, prefix)
    hand_written = encoder.encode(NAMES, "sculpture").text_embeddings
    assert not torch.allclose(hand_written, vocabulary.text_embeddings, atol=1e-3)


def test_a_separate_stage_two_adapter_has_its_own_prompts(tmp_path):
    """The reference's VOC 15/5 config: the class head with "a sculpture of a {}.", stage 2 with
    the separate adapter's learned prompts."""
    path = tmp_path / "model_final.pth"
    prompts = write_reference_checkpoint(path, region_prompts=True)
    segmenter = build(path, head_prompts="sculpture", trained_classes=["red circle"])
    loaded = segmenter.proposals.loaded
    assert torch.equal(
        loaded.region_prompts.prefix, prompts["_region_clip_adapter.prompt_learner.prefix_prompt"]
    )
    encoder = VocabularyEncoder(segmenter.clip, learned=segmenter.learned_text)
    stage_two = encoder.encode(NAMES, LEARNED)
    expected = encode_with_learned_prompts(segmenter.clip, loaded.region_prompts, ["red circle"])
    torch.testing.assert_close(stage_two.text_embeddings[0], expected[0])
    head = segmenter.proposals.text_embeddings(stage_two)
    torch.testing.assert_close(head, encoder.encode(NAMES, "sculpture").text_embeddings)
    assert segmenter.proposals.trained_mask(stage_two).tolist() == [True, False, False]


def test_learned_text_is_refused_without_learned_prompts():
    segmenter = build_segmenter("ovseg-tiny-clip", random_weights=True, device="cpu")
    assert segmenter.learned_text is None
    encoder = VocabularyEncoder(segmenter.clip, learned=segmenter.learned_text)
    with pytest.raises(ValueError, match="need learned prompt vectors"):
        encoder.encode(NAMES, LEARNED)


def test_head_prompts_are_only_for_the_maskformer_generator():
    with pytest.raises(ValueError, match="for the maskformer generator"):
        build_segmenter(
            "ovseg-tiny-clip", random_weights=True, device="cpu", head_prompts="sculpture"
        )


class OnePixelProposals:
    """Two masks of a 24x32 image: one pixel, and everything else; with class scores, so that
    a mask left out of stage 2 would keep CLIP probability 1 (the reference's rule)."""

    def __call__(self, image, vocabulary=None) -> Proposals:
        masks = torch.zeros((2, 24, 32), dtype=torch.bool)
        masks[0, 5, 7] = True
        masks[1] = ~masks[0]
        scores = torch.full((2, vocabulary.num_classes), 1.0 / vocabulary.num_classes)
        return Proposals(masks=masks, class_scores=scores)


@pytest.mark.parametrize("min_area, kept", [(1, [0, 1]), (16, [1])])
def test_min_proposal_area_1_classifies_a_one_pixel_mask(min_area, kept):
    segmenter = build_segmenter("ovseg-tiny-clip", random_weights=True, device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    masks = OnePixelProposals()(image, VocabularyEncoder(segmenter.clip).encode(NAMES)).masks
    crops = CropClassifier(segmenter.clip).make_crops(image, masks, 0.5, min_area)
    assert crops.kept.tolist() == kept
    assert torch.isfinite(crops.crops).all()
    segmenter.proposals = OnePixelProposals()
    segmenter.config = SegmenterConfig(min_proposal_area=min_area, min_segment_area=1)
    vocabulary = VocabularyEncoder(segmenter.clip).encode(NAMES, "single")
    result = segmenter.segment(image, vocabulary)
    assert result.labels.shape == (24, 32)
    # The pixel only mask 0 covers: p_net^(1 - lambda) p_clip^lambda, with p_clip = 1 when
    # stage 2 left the mask out (the reference's rule), CLIP's probability (< 1) when it did not.
    unclassified = (1.0 / len(NAMES)) ** (1 - segmenter.config.ensemble_weight)
    if min_area == 1:
        assert result.scores[5, 7] < unclassified - 1e-3
    else:
        assert result.scores[5, 7] == pytest.approx(unclassified)


def write_coco_stuff_folder(root, images: int = 2) -> None:
    """A COCO-Stuff val folder as the reference prepares it: val2017/NAME.jpg and
    stuffthingmaps_detectron2/val2017/NAME.png (0..170, 255 ignored), one image unlabelled."""
    rng = np.random.default_rng(0)
    (root / "val2017").mkdir(parents=True)
    labels = root / "stuffthingmaps_detectron2" / "val2017"
    labels.mkdir(parents=True)
    for index in range(images + 1):
        image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "val2017" / f"{index:012d}.jpg"), image)
        if index == images:
            continue  # the prepare script writes no label for an all-ignored image
        label = np.full((48, 64), 255, np.uint8)
        label[:24] = 0  # person (seen)
        label[24:, :32] = 23  # giraffe (unseen)
        cv2.imwrite(str(labels / f"{index:012d}.png"), label)


def test_ovseg_eval_paper_runs_the_reference_setting(tmp_path):
    root = tmp_path / "coco"
    write_coco_stuff_folder(root)
    checkpoint = tmp_path / "model_final.pth"
    write_reference_checkpoint(checkpoint, region_prompts=False)
    out = tmp_path / "out"
    args = ["eval", str(root), "--paper", "coco-stuff-156", "--proposal-checkpoint",
            str(checkpoint), "--processing-size", "short:96", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "metrics.json").read_text())
    settings = report["settings"]
    assert settings["protocol"] == "coco-stuff-156" and settings["paper"] == "coco-stuff-156"
    assert settings["processing_size"] == "short:96"  # given: it overrides the setting's 640
    assert settings["templates"] == LEARNED
    assert settings["proposals"].startswith("maskformer")
    assert settings["precision"].startswith("fp32")
    assert (settings["min_proposal_area"], settings["ensemble_weight"]) == (1, 0.8)
    assert report["num_images"] == 2
    metrics = report["metrics"]
    assert len(metrics["iou"]) == 171 and len(metrics["unseen_classes"]) == 15
    assert "giraffe" in metrics["unseen_classes"]
    assert metrics["seen_miou"] is not None and metrics["unseen_miou"] is not None


def test_the_protocol_sets_the_processing_size_unless_given():
    parser = build_parser()
    args = parser.parse_args(["eval", "data", "--protocol", "ade20k-150"])
    assert preset_defaults(args) == {"processing_size": "short:512:2048"}
    args = parser.parse_args(["eval", "data", "--paper", "voc-15", "--mask-threshold", "0.3"])
    defaults = preset_defaults(args)
    assert defaults["protocol"] == "voc-15" and defaults["ensemble_weight"] == 0.7
    reparsed = build_parser(defaults).parse_args(
        ["eval", "data", "--paper", "voc-15", "--mask-threshold", "0.3"]
    )
    assert reparsed.mask_threshold == 0.3  # given explicitly
    assert (reparsed.min_proposal_area, reparsed.proposals) == (1, "maskformer")
    assert str(reparsed.processing_size) == "short:512:2048"


def test_paper_without_the_reference_checkpoint_is_one_line(tmp_path, capsys):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    assert main(["segment", str(image), "--vocab", "wall,floor", "--paper", "ade20k-150"]) == 2
    assert "give its model_final.pth as --proposal-checkpoint" in capsys.readouterr().err


def test_paper_and_another_protocol_are_refused():
    args = build_parser().parse_args(
        ["eval", "data", "--paper", "ade20k-150", "--protocol", "coco-stuff-171"]
    )
    with pytest.raises(ValueError, match="evaluates on --protocol ade20k-150"):
        preset_defaults(args)


def test_voc_15_needs_the_separate_adapters_prompts(tmp_path):
    path = tmp_path / "model_final.pth"
    write_reference_checkpoint(path, region_prompts=False)
    setting = paper_setting("voc-15")
    segmenter = build(path, head_prompts=setting.head_prompts)
    with pytest.raises(ValueError, match="separate adapter's learned prompts"):
        check_checkpoint(setting, segmenter)
    check_checkpoint(paper_setting("coco-stuff-156"), segmenter)  # its own prompts suffice


def test_the_head_reuses_stage_twos_embeddings_and_caches_by_names(tmp_path):
    path = tmp_path / "model_final.pth"
    write_reference_checkpoint(path, region_prompts=False)
    segmenter = build(path, head_prompts="vild14")
    vocabulary = VocabularyEncoder(segmenter.clip).encode(NAMES, "vild14")
    torch.testing.assert_close(
        segmenter.proposals.text_embeddings(vocabulary), vocabulary.text_embeddings
    )
    first = VocabularyEncoder(segmenter.clip).encode(NAMES, "single")
    other = VocabularyEncoder(segmenter.clip).encode(NAMES[:2], "single")
    assert first.version == other.version == 1
    assert segmenter.proposals.text_embeddings(first).shape[0] == 3
    assert segmenter.proposals.text_embeddings(other).shape[0] == 2


def test_prepare_vocabulary_encodes_the_heads_text_before_the_first_frame(tmp_path):
    path = tmp_path / "model_final.pth"
    write_reference_checkpoint(path, region_prompts=False)
    segmenter = build(path, head_prompts="sculpture")
    vocabulary = VocabularyEncoder(segmenter.clip).encode(NAMES, "single")
    encoded = []
    encode = segmenter.proposals.head_encoder.encode
    segmenter.proposals.head_encoder.encode = lambda *a: encoded.append(a) or encode(*a)
    segmenter.prepare_vocabulary(vocabulary)
    assert len(encoded) == 1  # the class head's "sculpture" text, now
    segmenter.proposals.text_embeddings(vocabulary)
    assert len(encoded) == 1  # the frame finds it ready
