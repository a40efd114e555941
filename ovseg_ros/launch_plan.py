"""What `launch/segmenter.launch.py` starts, worked out without `launch` installed.

The launch file only reads its arguments and turns a `LaunchPlan` into launch_ros actions; every
decision lives here, in plain functions the tests call: which cameras, how many segmenters serve
them, each segmenter's namespace, remappings and parameter overrides, the RViz config for those
cameras, whether RViz2 can start, and what to say when a segmenter stops. Imports neither rclpy
nor launch.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ovseg_ros.cameras import (
    CAMERA_FORMAT,
    CameraTopics,
    check_name,
    join_namespace,
    parse_cameras,
    sibling_camera_info,
)

NODE_NAME = "ovseg_segmenter"
DEFAULT_IMAGE = "camera/color/image_raw"
DEFAULT_FIXED_FRAME = "camera_color_optical_frame"
CAMERA_PROCESSES = ("one", "each")
PASS_THROUGH = (
    "model",
    "pretrained",
    "checkpoint",
    "device",
    "precision",
    "classifier",
    "proposal_generator",
    "proposal_checkpoint",
    "proposal_model",
)
"""Node parameters with a launch argument of the same name; empty keeps the params file's value."""

RVIZ_MISSING = (
    "rviz:=true but RViz2 is not installed (no lib/rviz2/rviz2 under AMENT_PREFIX_PATH); "
    "install it with `sudo apt install ros-$ROS_DISTRO-rviz2` and source the ROS setup again, "
    "or launch with rviz:=false. Nothing was started."
)


class LaunchError(ValueError):
    """A launch argument that cannot be used, or a missing program; the message says which."""


@dataclass(frozen=True)
class LaunchArgument:
    """One `DeclareLaunchArgument`: name, default value and description."""

    name: str
    default: str
    description: str


def launch_arguments(params_file: str) -> list[LaunchArgument]:
    """The launch file's arguments; `params_file` is the default parameter file (the installed
    config/segmenter.yaml)."""
    arguments = [
        LaunchArgument(
            "image",
            DEFAULT_IMAGE,
            "Input image topic; relative names resolve in `namespace`.",
        ),
        LaunchArgument(
            "depth",
            "",
            "Depth topic registered to `image` (empty: no depth); the segmenter then publishes "
            "~/points.",
        ),
        LaunchArgument(
            "camera_info",
            "",
            "CameraInfo topic of the colour camera, with `depth` (empty: camera_info beside "
            "`image`).",
        ),
        LaunchArgument("compressed", "false", "true: subscribe to <image>/compressed."),
        LaunchArgument("params_file", params_file, "Parameter YAML of every segmenter."),
        LaunchArgument("namespace", "", "Namespace of the segmenter (and of every camera)."),
        LaunchArgument(
            "cameras",
            "",
            f"Several cameras: {CAMERA_FORMAT},... (instead of image, depth, camera_info).",
        ),
        LaunchArgument(
            "camera_processes",
            "one",
            "With `cameras`: one (one segmenter, one model, for every camera) or each (one "
            "segmenter per camera).",
        ),
        LaunchArgument(
            "vocabulary", "", "Vocabulary override: \"['person', 'chair']\" or person,chair."
        ),
        LaunchArgument(
            "use_sim_time",
            "false",
            "true: every segmenter (and RViz2) takes its time from /clock, as for a recording "
            "replayed with `ros2 bag play --clock` or `ovseg_frame_publisher --bag`.",
        ),
        LaunchArgument(
            "rviz", "false", "true: start RViz2 showing each camera's overlay (and points)."
        ),
        LaunchArgument(
            "fixed_frame",
            DEFAULT_FIXED_FRAME,
            "RViz2's Fixed Frame; the points are in the colour camera's optical frame.",
        ),
    ]
    arguments += [
        LaunchArgument(name, "", f"Parameter `{name}` of every segmenter (empty: params_file's).")
        for name in PASS_THROUGH
    ]
    return arguments


@dataclass(frozen=True)
class CameraView:
    """One camera as RViz2 shows it, all names absolute: the input topic (.../compressed with
    compressed:=true), the overlay and, for a camera with depth, the points ("" without)."""

    namespace: str
    input_topic: str
    overlay_topic: str
    points_topic: str = ""


@dataclass(frozen=True)
class SegmenterSpec:
    """Everything one segmenter node is started with, and the cameras it serves."""

    namespace: str
    params_file: str
    parameters: dict[str, Any]
    remappings: tuple[tuple[str, str], ...]
    cameras: tuple[CameraView, ...]
    node_name: str = NODE_NAME

    @property
    def full_name(self) -> str:
        """The node's fully qualified name, e.g. /robot1/ovseg_segmenter."""
        return resolve_topic(self.namespace, self.node_name)

    def ros_arguments(self) -> list[str]:
        """The same node as `--ros-args` for `python -m ovseg_ros.ros.segmenter_node`; `-p`
        values are JSON, which the ROS parameter parser reads as YAML of the same type."""
        arguments = ["--ros-args", "-r", f"__node:={self.node_name}"]
        arguments += ["-r", f"__ns:={self.namespace}", "--params-file", self.params_file]
        for source, target in self.remappings:
            arguments += ["-r", f"{source}:={target}"]
        for name, value in self.parameters.items():
            arguments += ["-p", f"{name}:={json.dumps(value)}"]
        return arguments


@dataclass(frozen=True)
class LaunchPlan:
    """The segmenters to start, whether RViz2 runs on /clock as they do (use_sim_time) and,
    with rviz:=true, the RViz config to start RViz2 with."""

    segmenters: list[SegmenterSpec]
    use_sim_time: bool = False
    rviz_config: dict[str, Any] | None = None


def resolve_topic(namespace: str, topic: str) -> str:
    """The absolute name of `topic` for a node in the absolute `namespace`."""
    if topic.startswith("/"):
        return topic
    return f"{namespace.rstrip('/')}/{topic}"


def _check_name(what: str, name: str) -> None:
    try:
        check_name(what, name)
    except ValueError as error:
        raise LaunchError(str(error)) from error


def parse_bool(name: str, text: str) -> bool:
    """A true/false launch argument (any case)."""
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise LaunchError(f"{name} must be true or false, got {text!r}")
    return value == "true"


def absolute_camera(camera: CameraTopics, base_namespace: str) -> CameraTopics:
    """`camera` with absolute names: its namespace under `base_namespace` unless absolute, its
    relative topics resolved in that namespace."""
    namespace = join_namespace(base_namespace, camera.namespace)
    image, depth, camera_info = (
        resolve_topic(namespace, topic) if topic else ""
        for topic in (camera.image, camera.depth, camera.camera_info)
    )
    return CameraTopics(namespace, image, depth, camera_info)


def single_camera(values: Mapping[str, str], namespace: str) -> CameraTopics:
    """The camera of `image`, `depth` and `camera_info` in the absolute `namespace`, names made
    absolute; without `camera_info`, the camera_info beside the image."""
    image, depth, camera_info = (values[n].strip() for n in ("image", "depth", "camera_info"))
    _check_name("image", image)
    if not depth:
        if camera_info:
            raise LaunchError("camera_info is only used with depth; give depth:=TOPIC as well")
        return absolute_camera(CameraTopics(namespace, image), namespace)
    _check_name("depth", depth)
    if camera_info:
        _check_name("camera_info", camera_info)
    camera = CameraTopics(namespace, image, depth, camera_info or sibling_camera_info(image))
    return absolute_camera(camera, namespace)


def listed_cameras(values: Mapping[str, str], base_namespace: str) -> list[CameraTopics]:
    """`cameras:=front:/front/image_raw,rear:rear/image_raw:rear/depth`: one camera per
    comma-separated `NAMESPACE:IMAGE[:DEPTH[:CAMERA_INFO]]` item (ovseg_ros.cameras), names made
    absolute (absolute_camera)."""
    for name in ("depth", "camera_info"):
        if values[name].strip():
            raise LaunchError(
                f"{name} is for the single camera; with cameras:= give each camera's topics in "
                f"its item, {CAMERA_FORMAT}"
            )
    try:
        cameras = parse_cameras(values["cameras"].split(","), base_namespace)
    except ValueError as error:
        raise LaunchError(f"cameras: {error}") from error
    return [absolute_camera(camera, base_namespace) for camera in cameras]


def parse_vocabulary(text: str) -> list[str]:
    """`"['person', 'chair']"` (a YAML list) or `person,chair`."""
    text = text.strip()
    if not text.startswith("["):
        return [name.strip() for name in text.split(",")]
    try:
        names = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # A parse error's text spans several lines (where, a caret); its `problem` is one.
        problem = getattr(exc, "problem", None) or exc
        raise LaunchError(f"vocabulary {text!r} is not a YAML list: {problem}") from exc
    return [str(name).strip() for name in names]


def parameter_overrides(values: Mapping[str, str]) -> dict[str, Any]:
    """The parameters every segmenter gets on top of the params file: the input transport from
    `compressed`, ROS's `use_sim_time`, the vocabulary and the pass-through arguments that are
    not empty."""
    compressed = parse_bool("compressed", values["compressed"])
    overrides: dict[str, Any] = {
        "input_transport": "compressed" if compressed else "raw",
        "use_sim_time": parse_bool("use_sim_time", values["use_sim_time"]),
    }
    if values["vocabulary"].strip():
        overrides["vocabulary"] = parse_vocabulary(values["vocabulary"])
    for name in PASS_THROUGH:
        if values[name].strip():
            overrides[name] = values[name].strip()
    return overrides


def _transport_suffix(parameters: Mapping[str, Any]) -> str:
    return "/compressed" if parameters["input_transport"] == "compressed" else ""


def camera_view(camera: CameraTopics, suffix: str) -> CameraView:
    """The topics RViz2 shows of the absolute `camera`, whose outputs are under
    NAMESPACE/ovseg_segmenter whether its segmenter is its own or shared."""
    outputs = resolve_topic(camera.namespace, NODE_NAME)
    points = f"{outputs}/points" if camera.has_depth else ""
    return CameraView(camera.namespace, camera.image + suffix, f"{outputs}/overlay", points)


def camera_segmenter(
    camera: CameraTopics, params_file: str, parameters: dict[str, Any]
) -> SegmenterSpec:
    """The node of one absolute camera (the single camera, or camera_processes:=each): in the
    camera's namespace, `image` (or `image/compressed`) remapped to the camera's topic, `use_depth`
    set and, with depth, `depth` and `camera_info` remapped; `parameters` from
    `parameter_overrides`."""
    suffix = _transport_suffix(parameters)
    remappings = [(f"image{suffix}", camera.image + suffix)]
    if camera.has_depth:
        remappings += [("depth", camera.depth), ("camera_info", camera.camera_info)]
    return SegmenterSpec(
        namespace=camera.namespace,
        params_file=params_file,
        parameters={**parameters, "use_depth": camera.has_depth},
        remappings=tuple(remappings),
        cameras=(camera_view(camera, suffix),),
    )


def shared_segmenter(
    cameras: list[CameraTopics], namespace: str, params_file: str, parameters: dict[str, Any]
) -> SegmenterSpec:
    """One node in `namespace` for every absolute camera (camera_processes:=one): parameter
    `cameras` lists them as CameraTopics.spec() strings; the node subscribes (to IMAGE/compressed
    with input_transport compressed) and publishes per camera itself, so nothing is remapped."""
    suffix = _transport_suffix(parameters)
    return SegmenterSpec(
        namespace=namespace,
        params_file=params_file,
        parameters={**parameters, "cameras": [camera.spec() for camera in cameras]},
        remappings=(),
        cameras=tuple(camera_view(camera, suffix) for camera in cameras),
    )


def rviz_config(
    segmenters: list[SegmenterSpec], template: Mapping[str, Any], fixed_frame: str
) -> dict[str, Any]:
    """`template` (config/ovseg.rviz) with `fixed_frame` and its displays replaced: per camera,
    an Image display of the overlay (shown), one of the input (ticked off: it costs a second
    image stream) and, for a camera with depth, a PointCloud2 display of its points."""
    displays = []
    for camera in (camera for spec in segmenters for camera in spec.cameras):
        suffix = "" if camera.namespace == "/" else f" {camera.namespace}"
        displays.append(_image_display(f"ovseg overlay{suffix}", camera.overlay_topic, True))
        displays.append(_image_display(f"camera{suffix}", camera.input_topic, False))
        if camera.points_topic:
            displays.append(_points_display(f"ovseg points{suffix}", camera.points_topic))
    manager = template["Visualization Manager"]
    options = {**manager["Global Options"], "Fixed Frame": fixed_frame}
    config = dict(template)
    config["Visualization Manager"] = {**manager, "Displays": displays, "Global Options": options}
    return config


def _topic(topic: str, reliability: str) -> dict[str, Any]:
    return {
        "Depth": 1,
        "Durability Policy": "Volatile",
        "History Policy": "Keep Last",
        "Reliability Policy": reliability,
        "Value": topic,
    }


def _image_display(name: str, topic: str, enabled: bool) -> dict[str, Any]:
    return {
        "Class": "rviz_default_plugins/Image",
        "Enabled": enabled,
        "Name": name,
        "Normalize Range": True,
        # The overlay is published reliably; a camera may publish best effort only.
        "Topic": _topic(topic, "Reliable" if enabled else "Best Effort"),
        "Value": enabled,
    }


def _points_display(name: str, topic: str) -> dict[str, Any]:
    """The points coloured by their `rgb` field (the class colour), 3 px each."""
    return {
        "Class": "rviz_default_plugins/PointCloud2",
        "Color Transformer": "RGB8",
        "Enabled": True,
        "Name": name,
        "Position Transformer": "XYZ",
        "Size (Pixels)": 3,
        "Style": "Points",
        "Topic": _topic(topic, "Reliable"),
        "Value": True,
    }


def write_rviz_config(config: Mapping[str, Any]) -> Path:
    """Writes `config` to a new temporary .rviz file and returns its path."""
    handle, name = tempfile.mkstemp(prefix="ovseg_", suffix=".rviz")
    with os.fdopen(handle, "w") as file:
        yaml.safe_dump(dict(config), file, sort_keys=False)
    return Path(name)


def find_rviz(ament_prefix_path: str) -> Path | None:
    """The rviz2 program launch_ros would run (lib/rviz2/rviz2 of an AMENT_PREFIX_PATH prefix),
    or None."""
    for prefix in filter(None, ament_prefix_path.split(os.pathsep)):
        program = Path(prefix) / "lib" / "rviz2" / "rviz2"
        if program.is_file() and os.access(program, os.X_OK):
            return program
    return None


def plan_launch(
    values: Mapping[str, str],
    rviz_template: Mapping[str, Any],
    base_namespace: str = "",
    ament_prefix_path: str = "",
) -> LaunchPlan:
    """The whole launch from the argument values (see `launch_arguments`); `base_namespace` is a
    namespace pushed by an including launch file. Raises LaunchError before anything is started
    when an argument is invalid or rviz:=true and RViz2 is missing."""
    namespace = values["namespace"].strip()
    if namespace not in ("", "/"):
        _check_name("namespace", namespace)
    base = join_namespace(base_namespace, namespace)
    processes = values["camera_processes"].strip().lower()
    if processes not in CAMERA_PROCESSES:
        raise LaunchError(
            f"camera_processes must be one or each, got {values['camera_processes']!r}"
        )
    parameters = parameter_overrides(values)
    params_file = values["params_file"]
    if not values["cameras"].strip():
        segmenters = [camera_segmenter(single_camera(values, base), params_file, parameters)]
    else:
        cameras = listed_cameras(values, base)
        if processes == "one":
            segmenters = [shared_segmenter(cameras, base, params_file, parameters)]
        else:
            segmenters = [camera_segmenter(c, params_file, parameters) for c in cameras]
    use_sim_time = parameters["use_sim_time"]
    if not parse_bool("rviz", values["rviz"]):
        return LaunchPlan(segmenters, use_sim_time)
    fixed_frame = values["fixed_frame"].strip()
    if not fixed_frame:
        raise LaunchError(f"fixed_frame must not be empty (e.g. {DEFAULT_FIXED_FRAME})")
    if find_rviz(ament_prefix_path) is None:
        raise LaunchError(RVIZ_MISSING)
    return LaunchPlan(segmenters, use_sim_time, rviz_config(segmenters, rviz_template, fixed_frame))


def segmenter_exit_message(node_name: str, returncode: int) -> str:
    """Why the launch stops when a segmenter exits on its own."""
    if returncode < 0:
        how = f"was killed by signal {-returncode}"
    elif returncode == 0:
        how = "stopped"
    else:
        how = f"exited with code {returncode} (its error is above)"
    return f"segmenter {node_name} {how}; stopping the launch"
