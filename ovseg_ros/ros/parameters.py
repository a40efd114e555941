"""The segmenter node's parameters: names, defaults, descriptors, and the settings they make.

config/segmenter.yaml holds the same defaults; README.md documents the table.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from ovseg_ros.cameras import CAMERA_FORMAT, parse_camera
from ovseg_ros.engine.options import (
    CLASSIFIERS,
    DEFAULT_PROCESSING_SIZE,
    DEFAULT_PROPOSAL_GENERATOR,
    DEFAULT_PROPOSAL_MODEL,
    DEVICES,
    PAPER_SETTINGS,
    PRECISIONS,
)
from ovseg_ros.engine.paper import paper_setting
from ovseg_ros.engine.proposals import proposal_generator_names
from ovseg_ros.engine.proposals.sam import is_proposal_model
from ovseg_ros.engine.resize import ProcessingSize
from ovseg_ros.engine.segmenter import SegmenterConfig


@dataclass
class SegmenterParameters:
    """Values of the segmenter node's parameters (units in the names; 0 disables a limit)."""

    paper_setting: str
    vocabulary: list[str]
    prompt_templates: list[str]
    model: str
    pretrained: str
    checkpoint: str
    device: str
    precision: str
    compile_image_tower: bool
    max_classes: int
    proposal_generator: str
    proposal_checkpoint: str
    proposal_model: str
    max_proposals: int
    processing_size: str
    max_input_pixels: int
    classifier: str
    ensemble_weight: float
    mask_threshold: float
    unlabeled_threshold: float
    rejection: float
    min_segment_area: int
    min_proposal_area: int
    max_rate_hz: float
    max_age_s: float
    input_timeout_s: float
    pipeline: bool
    overlay_alpha: float
    input_transport: str
    input_reliability: str
    input_depth: int
    cameras: list[str]
    use_depth: bool
    depth_tolerance_s: float
    max_depth_m: float
    points_stride: int


DEFAULTS = SegmenterParameters(
    paper_setting="",
    vocabulary=["person", "chair", "table", "floor", "wall", "door"],
    prompt_templates=["vild14"],
    model="ViT-B-16",
    pretrained="openai",
    checkpoint="",
    device="auto",
    precision="auto",
    compile_image_tower=False,
    max_classes=1000,
    proposal_generator=DEFAULT_PROPOSAL_GENERATOR,
    proposal_checkpoint="",
    proposal_model=DEFAULT_PROPOSAL_MODEL,
    max_proposals=100,
    processing_size=DEFAULT_PROCESSING_SIZE,
    max_input_pixels=4096 * 4096,
    classifier=SegmenterConfig.classifier,
    ensemble_weight=SegmenterConfig.ensemble_weight,
    mask_threshold=SegmenterConfig.mask_threshold,
    unlabeled_threshold=SegmenterConfig.unlabeled_threshold,
    rejection=SegmenterConfig.rejection,
    min_segment_area=SegmenterConfig.min_segment_area,
    min_proposal_area=SegmenterConfig.min_proposal_area,
    max_rate_hz=0.0,
    max_age_s=1.0,
    input_timeout_s=5.0,
    pipeline=False,
    overlay_alpha=0.5,
    input_transport="raw",
    input_reliability="best_effort",
    input_depth=1,
    cameras=[],
    use_depth=False,
    depth_tolerance_s=0.02,
    max_depth_m=10.0,
    points_stride=2,
)

# Parameters that take effect without a restart; the rest are read-only once the node runs.
DYNAMIC = {
    "vocabulary",
    "prompt_templates",
    "mask_threshold",
    "unlabeled_threshold",
    "rejection",
    "ensemble_weight",
    "classifier",
    "min_segment_area",
    "min_proposal_area",
    "max_rate_hz",
    "max_age_s",
    "input_timeout_s",
    "processing_size",
    "max_input_pixels",
    "overlay_alpha",
    "depth_tolerance_s",
    "max_depth_m",
    "points_stride",
}


def _unit_range() -> list[FloatingPointRange]:
    return [FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)]


DESCRIPTIONS: dict[str, tuple[str, dict]] = {
    "paper_setting": (
        "Run as the reference implementation's config of this name runs its checkpoint (given "
        "as proposal_checkpoint): " + " | ".join(PAPER_SETTINGS) + ". It sets "
        "proposal_generator (maskformer) and precision (fp32), and those of classifier, "
        "min_proposal_area, unlabeled_threshold, rejection, mask_threshold, ensemble_weight, "
        "processing_size and prompt_templates that hold the project's defaults. Empty: the "
        "project's own settings.",
        {},
    ),
    "vocabulary": (
        "Class names to segment, e.g. ['person', 'chair']. 'sofa|couch' gives one class several "
        "names. Validated on change; a rejected change leaves the old vocabulary in force.",
        {},
    ),
    "prompt_templates": (
        "Prompt templates for the text embeddings: set names ('single', 'sculpture', "
        "'imagenet80', 'vild14') and/or templates containing '{}', e.g. ['a photo of a {}.']; "
        "or ['learned']: the learned prompt vectors of a zsseg proposal_checkpoint.",
        {},
    ),
    "model": ("open_clip model name, e.g. ViT-B-16, or ovseg-tiny-clip.", {}),
    "pretrained": ("open_clip pretrained tag (e.g. openai); ignored when checkpoint is set.", {}),
    "checkpoint": (
        "Local CLIP weights file (safetensors or state dict); overrides pretrained. A relative "
        "path is looked up in the working directory, then in the package's install folders.",
        {},
    ),
    "device": ("auto | cuda | cpu.", {}),
    "precision": (
        "auto | fp16 | bf16 | fp32: auto is fp16 on CUDA, bf16 on a CPU with native bf16 "
        "(AVX512-BF16 or AMX), else fp32; fp16 is CUDA only, bf16 CPU only.",
        {},
    ),
    "compile_image_tower": (
        "torch.compile the CLIP image tower (crop classifier); the first frames pay the "
        "compilation.",
        {},
    ),
    "max_classes": (
        "Largest vocabulary accepted.",
        {"integer_range": [IntegerRange(from_value=1, to_value=65534, step=1)]},
    ),
    "proposal_generator": (
        "Stage-1 mask proposal generator: " + " | ".join(proposal_generator_names()) + ".",
        {},
    ),
    "proposal_checkpoint": (
        "Weights of a learned proposal generator: maskformer (empty = its bundled default), "
        "sam or sam2 (required; Meta's .pt/.pth files or safetensors).",
        {},
    ),
    "proposal_model": (
        "Model type of the sam (vit_b | vit_l | vit_h) or sam2 (hiera_t | hiera_s | hiera_b+ | "
        "hiera_l for SAM 2.1, sam2_hiera_t ... for SAM 2.0) generator; empty = read from "
        "proposal_checkpoint. Other generators take none.",
        {},
    ),
    "classifier": (
        "crop: one CLIP forward per proposal (the paper); dense: one forward per frame, "
        "each proposal's class token attending only to its patches (several times faster).",
        {},
    ),
    "ensemble_weight": (
        "Lambda of the geometric ensemble of a learned generator's class scores with CLIP's "
        "(0 = CLIP alone); unused by training-free generators.",
        {"floating_point_range": _unit_range()},
    ),
    "max_proposals": (
        "Most mask proposals classified per frame.",
        {"integer_range": [IntegerRange(from_value=1, to_value=1000, step=1)]},
    ),
    "processing_size": (
        "The size both stages see: N or long:N, frames whose long side is larger are "
        "downscaled to N; short:N or short:N:M, the short side scaled to N (up or down), the "
        "long side then at most M (short:512:2048: the reference's test-time resize); 0 or "
        "native, as they come. Labels, masks and overlay come back at the input's resolution.",
        {},
    ),
    "max_input_pixels": (
        "Frames with more pixels (width x height, read before decoding: a compressed frame's "
        "PNG/JPEG header) are dropped with a warning; with a limit, compressed frames in "
        "other formats are refused. 0 = no limit.",
        {"integer_range": [IntegerRange(from_value=0, to_value=1 << 40, step=1)]},
    ),
    "mask_threshold": (
        "Binarisation threshold of soft proposal masks (maskformer) for stage 2; superpixel "
        "masks are binary already.",
        {"floating_point_range": _unit_range()},
    ),
    "unlabeled_threshold": (
        "Pixels whose best class score is below this are published as unlabeled (65535).",
        {"floating_point_range": _unit_range()},
    ),
    "rejection": (
        "Open-set rejection strength: pixels whose probability of showing one of the "
        "vocabulary's classes is below this become unlabeled (65535, 'unknown'); each result "
        "counts them (rejected_pixels). 0 = off: every covered pixel gets its best class.",
        {"floating_point_range": _unit_range()},
    ),
    "min_segment_area": (
        "Segments smaller than this many pixels are left out of ~/result's segment list.",
        {"integer_range": [IntegerRange(from_value=1, to_value=1 << 30, step=1)]},
    ),
    "min_proposal_area": (
        "Proposals with fewer pixels than this (once binarised) are dropped before CLIP.",
        {"integer_range": [IntegerRange(from_value=1, to_value=1 << 30, step=1)]},
    ),
    "max_rate_hz": (
        "Most frames processed per second; 0 = as fast as possible.",
        {"floating_point_range": [FloatingPointRange(from_value=0.0, to_value=1000.0, step=0.0)]},
    ),
    "max_age_s": (
        "Frames older than this (their stamp against this node's clock, which is /clock with "
        "use_sim_time) when processing starts are dropped; 0 = never drop.",
        {"floating_point_range": [FloatingPointRange(from_value=0.0, to_value=3600.0, step=0.0)]},
    ),
    "input_timeout_s": (
        "A camera that has sent frames and then sends none for this long (seconds, steady "
        "clock) is reported once, and again when its frames return; 0 = never.",
        {"floating_point_range": [FloatingPointRange(from_value=0.0, to_value=3600.0, step=0.0)]},
    ),
    "pipeline": (
        "Run stage 1 (proposals) of the next frame on a thread of its own while stage 2 of the "
        "current one runs: more frames/s when the stages use different processors (proposals "
        "on the CPU, CLIP on a GPU); on a CPU alone they share its cores. Torch gets one CPU "
        "thread fewer and Python's thread switch interval becomes 0.5 ms while it is on.",
        {},
    ),
    "overlay_alpha": (
        "Opacity of the class colors in ~/overlay.",
        {"floating_point_range": _unit_range()},
    ),
    "input_transport": ("raw (image) | compressed (image/compressed).", {}),
    "input_reliability": ("Input QoS reliability: best_effort | reliable.", {}),
    "input_depth": (
        "Input QoS history depth.",
        {"integer_range": [IntegerRange(from_value=1, to_value=100, step=1)]},
    ),
    "cameras": (
        f"Several cameras served by this one node and model, each {CAMERA_FORMAT}; camera "
        "NAMESPACE publishes under NAMESPACE/<node name>/. Empty: one camera on `image` "
        "(and `depth`, `camera_info` with use_depth), publishing under ~/.",
        {},
    ),
    "use_depth": (
        "Without `cameras`: also subscribe to `depth` (16UC1 mm or 32FC1 m, registered to the "
        "colour image) and `camera_info` (the colour camera's), for ~/points and per-segment 3D.",
        {},
    ),
    "depth_tolerance_s": (
        "Largest stamp difference between a colour frame and the depth image paired with it; "
        "a frame without one is segmented in 2D only.",
        {"floating_point_range": [FloatingPointRange(from_value=0.0, to_value=10.0, step=0.0)]},
    ),
    "max_depth_m": (
        "Depth beyond this (metres) counts as invalid: left out of ~/points and segment 3D.",
        {"floating_point_range": [FloatingPointRange(from_value=0.01, to_value=1000.0, step=0.0)]},
    ),
    "points_stride": (
        "~/points takes every n-th depth pixel in both directions (bounds the point count); "
        "segment 3D uses every pixel.",
        {"integer_range": [IntegerRange(from_value=1, to_value=64, step=1)]},
    ),
}

CHOICES = {
    "paper_setting": ("", *PAPER_SETTINGS),
    "classifier": CLASSIFIERS,
    "proposal_generator": tuple(proposal_generator_names()),
    "device": DEVICES,
    "precision": PRECISIONS,
    "input_transport": ("raw", "compressed"),
    "input_reliability": ("best_effort", "reliable"),
}


LIST_ITEMS = {
    "vocabulary": "names",
    "prompt_templates": "template set names or templates",
    "cameras": f"cameras, each {CAMERA_FORMAT}",
}
"""What the items of each list parameter are, for the wrong-type message."""


EXAMPLES = {"cameras": ["front:/front/image_raw", "rear:/rear/image_raw"]}
"""Example values of parameters whose default is no example (an empty list)."""


def _example(value: object) -> str:
    """A parameter value as `ros2 param set` takes it (lists: their first two items)."""
    if isinstance(value, list):
        return '"[' + ", ".join(f"'{item}'" for item in value[:2]) + ']"'
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "''"


def _in_range(name: str, value: float) -> None:
    """Raises ValueError when `value` lies outside the range in name's descriptor."""
    ranges = DESCRIPTIONS[name][1]
    for bound in ranges.get("integer_range", []) + ranges.get("floating_point_range", []):
        if not bound.from_value <= value <= bound.to_value:
            raise ValueError(
                f"parameter {name} must be between {bound.from_value} and {bound.to_value}, "
                f"got {value}"
            )


def check_value(name: str, value: object) -> object:
    """Checks a value for parameter `name` (its type, range and choices) and returns it as the
    node uses it: an integer given for a float parameter becomes a float, arrays become lists.

    Raises ValueError with the node's own reason and an example, e.g.
    `parameter vocabulary must be a list of names, e.g. "['person', 'chair']"`.
    """
    default = getattr(DEFAULTS, name)
    example = f"e.g. {_example(EXAMPLES.get(name, default))}"
    if value is None:  # NOT_SET: what `name:=[]` and an empty YAML value give
        if isinstance(default, list):
            return []
        raise ValueError(f"parameter {name} has no value, {example}")
    if isinstance(default, list):
        items = list(value) if isinstance(value, list | tuple) else None
        if items is None or not all(isinstance(item, str) for item in items):
            raise ValueError(f"parameter {name} must be a list of {LIST_ITEMS[name]}, {example}")
        if name == "cameras":  # the syntax; the node checks the namespaces in its own
            try:
                for item in items:
                    parse_camera(item)
            except ValueError as exc:
                raise ValueError(f"parameter cameras: {exc}") from exc
        return items
    if name == "processing_size":  # text; an integer is what `processing_size:=640` gives
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"parameter {name} must be a string, {example}; got {value!r}")
        try:
            return str(ProcessingSize.parse(value))
        except ValueError as exc:
            raise ValueError(f"parameter {name}: {exc}") from exc
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"parameter {name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"parameter {name} must be an integer, {example}; got {value!r}")
        _in_range(name, value)
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"parameter {name} must be a number, {example}; got {value!r}")
        _in_range(name, float(value))
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"parameter {name} must be a string, {example}; got {value!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise ValueError(f"parameter {name} must be one of {CHOICES[name]}, got {value!r}")
    if name == "proposal_model" and not is_proposal_model(value):
        raise ValueError(
            f"parameter proposal_model must be empty or a sam or sam2 model such as vit_b or "
            f"hiera_t, got {value!r}"
        )
    return value


def paper_values(name: str) -> dict[str, object]:
    """The node parameters a paper setting (engine/paper.py) fixes, with its values; {} for
    ""."""
    return paper_setting(name).settings() if name else {}


def paper_build_settings(p: SegmenterParameters) -> dict[str, object]:
    """build_segmenter's class-head prompts and seen classes for p.paper_setting ({} without
    one). Raises ValueError when it lacks the reference checkpoint."""
    if not p.paper_setting:
        return {}
    if not p.proposal_checkpoint:
        raise ValueError(
            f"paper_setting {p.paper_setting} runs the reference's own checkpoint: set "
            "proposal_checkpoint to its model_final.pth"
        )
    return paper_setting(p.paper_setting).segmenter_arguments()


def declare_parameters(node: Node) -> SegmenterParameters:
    """Declares every parameter on `node` with its descriptor and returns the values in force.

    Parameters are dynamically typed for rclpy so that a value of the wrong type reaches
    check_value, whose reason names the parameter and gives an example (rclpy's own says only
    "Wrong parameter type"). With a paper_setting, its read-only settings are declared with
    its values (whatever was given), and its run-time ones that are left at their defaults are
    set to its values (so `ros2 param get` shows what is in force). Raises ValueError for a
    value check_value refuses.
    """
    values: dict[str, object] = {}
    preset: dict[str, object] = {}
    for field in fields(SegmenterParameters):
        name = field.name
        description, ranges = DESCRIPTIONS[name]
        descriptor = ParameterDescriptor(
            description=description, read_only=name not in DYNAMIC, dynamic_typing=True, **ranges
        )
        fixed = name in preset and name not in DYNAMIC
        default = preset[name] if fixed else getattr(DEFAULTS, name)
        node.declare_parameter(name, default, descriptor, ignore_override=fixed)
        values[name] = check_value(name, node.get_parameter(name).value)
        if name == "paper_setting":
            preset = paper_values(values[name])
        elif name in preset and not fixed and values[name] == getattr(DEFAULTS, name):
            node.set_parameters([Parameter(name, value=preset[name])])
            values[name] = check_value(name, preset[name])
    return SegmenterParameters(**values)
