"""The reference implementation's inference settings (MendelXu/zsseg.baseline), by name.

A PaperSetting is what one of the reference's configs fixes at test time for one of its
checkpoints and one test dataset: the test-time resize (the dataset's INPUT.MIN_SIZE_TEST /
MAX_SIZE_TEST), the prompts of the proposal network's class head and of stage 2 (learned prompt
vectors or hand-written templates, MODEL.CLIP_ADAPTER.PROMPT_LEARNER and, where the config has a
separate stage-2 adapter, REGION_CLIP_ADAPTER), the ensemble weight (CLIP_ENSEMBLE_WEIGHT), the
mask threshold (MASK_THR) and the classes the test set's metadata flags as seen (trainable_flag,
which picks the seen or unseen form of the ensemble per class).

Fixed in every setting, as the reference runs: the MaskFormer proposal network, one CLIP forward
per mask crop, every non-empty mask classified (min_proposal_area 1), fp32, no unlabeled
threshold and no open-set rejection.

Checkpoints: the reference publishes two, both trained on COCO-Stuff's 156 seen classes: its
zero-shot model (learned prompts; the "coco-stuff-156" setting) and its cross-dataset model
(trained with ViLD prompts; the "ade20k-150" and "pcontext-59" settings). The prompt ablations
("coco-stuff-156-single", "-vild", "-imagenet") and the VOC settings need checkpoints trained
with the reference's configs of those names. "voc-15-single" follows the R50 config
(zero_shot_maskformer_R50_single_prompt_bs16_20k.yaml): the R101c one names a base file the
reference does not contain.

PaperSetting.settings() gives the values under the names of the CLI options and node
parameters; the project's own defaults differ on purpose (the README's "Reproducing the paper").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ovseg_ros.engine.dataset_protocols import dataset_protocol
from ovseg_ros.engine.prompts import LEARNED

if TYPE_CHECKING:
    from ovseg_ros.engine.segmenter import TwoStageSegmenter


@dataclass(frozen=True)
class PaperSetting:
    """name: the setting's name; config: the reference's config file it follows; protocol: the
    test dataset (dataset_protocols name); head_prompts, stage_two_prompts: LEARNED or a template
    set name; ensemble_weight: lambda in [0, 1]; mask_threshold: in [0, 1); seen_from: the
    dataset protocol whose seen classes the test metadata flags as trained, or None (cross-dataset
    sets without flags: every class takes the unseen form)."""

    name: str
    config: str
    protocol: str
    head_prompts: str
    stage_two_prompts: str
    ensemble_weight: float
    mask_threshold: float
    seen_from: str | None

    @property
    def processing_size(self) -> str:
        """The test dataset's resize as a processing size: "short:S:M"."""
        return dataset_protocol(self.protocol).processing_size

    @property
    def trained_classes(self) -> list[str] | None:
        """Names the ensemble treats as seen (trained) classes, or None."""
        if self.seen_from is None:
            return None
        protocol = dataset_protocol(self.seen_from)
        unseen = set(protocol.unseen_classes)
        return [name for name in protocol.class_names if name not in unseen]

    def segmenter_arguments(self) -> dict[str, object]:
        """build_segmenter's keyword arguments for the setting: the class head's prompts and the
        seen classes."""
        return {"head_prompts": self.head_prompts, "trained_classes": self.trained_classes}

    def settings(self) -> dict[str, object]:
        """The setting's values under the CLI's / node's setting names (prompt_templates: the
        stage-2 prompts)."""
        return {
            "proposal_generator": "maskformer",
            "classifier": "crop",
            "precision": "fp32",
            "min_proposal_area": 1,
            "unlabeled_threshold": 0.0,
            "rejection": 0.0,
            "mask_threshold": self.mask_threshold,
            "ensemble_weight": self.ensemble_weight,
            "processing_size": self.processing_size,
            "prompt_templates": [self.stage_two_prompts],
        }


COCO = "configs/coco-stuff-164k-156/zero_shot_maskformer_R101c_"
VOC = "configs/voc-11k-{}/zero_shot_maskformer_R101c_"

PAPER_SETTINGS: dict[str, PaperSetting] = {
    s.name: s
    for s in (
        PaperSetting("coco-stuff-156", COCO + "bs32_60k.yaml", "coco-stuff-156",
                     LEARNED, LEARNED, 0.8, 0.5, "coco-stuff-156"),
        PaperSetting("coco-stuff-156-single", COCO + "single_prompt_bs32_60k.yaml",
                     "coco-stuff-156", "sculpture", "sculpture", 0.8, 0.5, "coco-stuff-156"),
        PaperSetting("coco-stuff-156-vild", COCO + "vild_prompt_bs32_60k.yaml",
                     "coco-stuff-156", "vild14", "vild14", 0.8, 0.5, "coco-stuff-156"),
        PaperSetting("coco-stuff-156-imagenet", COCO + "imagenet_prompt_bs32_60k.yaml",
                     "coco-stuff-156", "imagenet80", "imagenet80", 0.8, 0.5, "coco-stuff-156"),
        PaperSetting("voc-15", VOC.format(15) + "bs16_20k.yaml",
                     "voc-15", "sculpture", LEARNED, 0.7, 0.5, "voc-15"),
        PaperSetting("voc-15-single", VOC.format(15) + "single_prompt_bs16_20k.yaml",
                     "voc-15", "sculpture", "sculpture", 0.7, 0.5, "voc-15"),
        PaperSetting("voc-20", VOC.format(20) + "bs16_test_only.yaml",
                     "voc-20", LEARNED, LEARNED, 0.4, 0.5, "voc-15"),
        PaperSetting("ade20k-150", "configs/ade20k-150/cross_dataset_test_only.yaml",
                     "ade20k-150", "vild14", "vild14", 0.5, 0.4, None),
        PaperSetting("pcontext-59", "configs/pcontext-59/cross_dataset_test_only.yaml",
                     "pcontext-59", "vild14", "vild14", 0.4, 0.5, None),
    )
}  # fmt: skip
"""The reference's settings for its COCO-Stuff 156/15 checkpoints (learned prompts, and the
single-template, ViLD and ImageNet prompt ablations), its VOC 15/5 checkpoints, and the
cross-dataset tests of a COCO-Stuff-156 checkpoint on VOC-20, ADE20K-150 and Pascal Context-59."""


def check_checkpoint(setting: PaperSetting, segmenter: TwoStageSegmenter) -> None:
    """ValueError when the segmenter's proposal checkpoint lacks the learned prompt vectors the
    setting's stage 2 needs: a separate stage-2 adapter's (voc-15) or any."""
    if setting.stage_two_prompts != LEARNED:
        return
    loaded = segmenter.proposals.loaded
    if setting.head_prompts != LEARNED and loaded.region_prompts is None:
        raise ValueError(
            f"paper setting {setting.name} runs stage 2 with a separate adapter's learned "
            f"prompts (_region_clip_adapter.prompt_learner); {loaded.source} has none"
        )
    if loaded.stage_two_prompts is None:
        raise ValueError(
            f"paper setting {setting.name} runs stage 2 with learned prompts; "
            f"{loaded.source} has none (use a learnable-prompt checkpoint, or another setting)"
        )


def paper_setting(name: str) -> PaperSetting:
    """The setting of that name; ValueError listing the known ones."""
    if name not in PAPER_SETTINGS:
        raise ValueError(f"unknown paper setting {name!r}; known: {', '.join(PAPER_SETTINGS)}")
    return PAPER_SETTINGS[name]
