"""The node's paper_setting over DDS: the reference's settings in force and visible as parameters,
learned prompts in stage 2, and the refusals (no checkpoint, learned prompts without any)."""

from __future__ import annotations

import pytest
from test_paper import write_reference_checkpoint
from test_segmenter_node import Harness, _overrides, _scene_image

from ovseg_ros.ros.segmenter_node import SegmenterNode


def test_a_paper_setting_is_in_force_and_visible(ros_context, tmp_path):
    checkpoint = tmp_path / "model_final.pth"
    write_reference_checkpoint(checkpoint, region_prompts=False)
    harness = Harness(
        ros_context,
        paper_setting="coco-stuff-156",
        proposal_checkpoint=str(checkpoint),
        prompt_templates=["vild14"],  # the default: the setting's learned prompts replace it
        processing_size="short:96",  # given: kept
    )
    try:
        harness.wait_connected()
        node = harness.segmenter
        value = {name: node.get_parameter(name).value for name in (
            "proposal_generator", "precision", "min_proposal_area", "prompt_templates",
            "processing_size", "ensemble_weight", "mask_threshold", "classifier")}  # fmt: skip
        assert value == {
            "proposal_generator": "maskformer",
            "precision": "fp32",
            "min_proposal_area": 1,
            "prompt_templates": ["learned"],
            "processing_size": "short:96",
            "ensemble_weight": 0.8,
            "mask_threshold": 0.5,
            "classifier": "crop",
        }
        assert str(node.segmenter.config.processing_size) == "short:96"
        assert node.segmenter.config.min_proposal_area == 1
        assert node.vocabulary.templates == ("learned",)
        _, message = _scene_image(1000000, 1)
        harness.image_pub.publish(message)
        assert harness.spin_until(lambda: harness.results, timeout_s=60.0)
        labels = harness.results[0].labels
        assert (labels.width, labels.height) == (320, 240)  # the input size, not 128x96
    finally:
        harness.close()


def test_a_paper_setting_needs_the_reference_checkpoint(ros_context):
    with pytest.raises(ValueError, match="set proposal_checkpoint to its model_final.pth"):
        SegmenterNode(
            context=ros_context,
            parameter_overrides=_overrides(paper_setting="ade20k-150"),
        )


def test_learned_prompts_are_refused_without_a_checkpoint_that_has_them(ros_context):
    harness = Harness(ros_context)
    try:
        harness.wait_connected()
        (result,) = harness.set_parameters(prompt_templates=["learned"])
        assert not result.successful
        assert "need learned prompt vectors" in result.reason
        assert harness.segmenter.get_parameter("prompt_templates").value == ["single"]
    finally:
        harness.close()


def test_an_unknown_paper_setting_is_refused(ros_context):
    with pytest.raises(ValueError, match="parameter paper_setting must be one of"):
        SegmenterNode(context=ros_context, parameter_overrides=_overrides(paper_setting="coco"))
