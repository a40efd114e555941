"""What `launch/segmenter.launch.py` starts, worked out without `launch` installed.

The launch file only reads its arguments and turns a `LaunchPlan` into launch_ros actions; every
decision lives here, in plain functions the tests call: which cameras, each segmenter's
namespace, remappings and parameter overrides, the RViz config for those cameras, whether RViz2
can start, and what to say when a segmenter stops. Imports neither rclpy nor launch.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NODE_NAME = "ovseg_segmenter"
DEFAULT_IMAGE = "camera/color/image_raw"
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

_TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
_NAME = re.compile(rf"/?{_TOKEN}(/{_TOKEN})*")


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
        LaunchArgument("compressed", "false", "true: subscribe to <image>/compressed."),
        LaunchArgument("params_file", params_file, "Parameter YAML of every segmenter."),
        LaunchArgument("namespace", "", "Namespace of the segmenter (and of every camera)."),
        LaunchArgument(
            "cameras",
            "",
            "Several cameras, one segmenter each: ns:topic,ns:topic (then `image` is unused).",
        ),
        LaunchArgument(
            "vocabulary", "", "Vocabulary override: \"['person', 'chair']\" or person,chair."
        ),
        LaunchArgument("rviz", "false", "true: start RViz2 showing each camera's overlay."),
    ]
    arguments += [
        LaunchArgument(name, "", f"Parameter `{name}` of every segmenter (empty: params_file's).")
        for name in PASS_THROUGH
    ]
    return arguments


@dataclass(frozen=True)
class Camera:
    """One segmenter's camera: its absolute namespace and its input topic as given."""

    namespace: str
    image: str


@dataclass(frozen=True)
class SegmenterSpec:
    """Everything one segmenter node is started with."""

    namespace: str
    params_file: str
    parameters: dict[str, Any]
    remappings: tuple[tuple[str, str], ...]
    input_topic: str
    node_name: str = NODE_NAME

    @property
    def full_name(self) -> str:
        """The node's fully qualified name, e.g. /robot1/ovseg_segmenter."""
        return resolve_topic(self.namespace, self.node_name)

    @property
    def overlay_topic(self) -> str:
        return f"{self.full_name}/overlay"

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
    """The segmenters to start and, with rviz:=true, the RViz config to start RViz2 with."""

    segmenters: list[SegmenterSpec]
    rviz_config: dict[str, Any] | None = None


def join_namespace(base: str, namespace: str) -> str:
    """The absolute namespace: `namespace` if absolute, else under `base` ('' or '/' = root)."""
    namespace = namespace.strip()
    if namespace.startswith("/"):
        return namespace.rstrip("/") or "/"
    parts = [part for part in (base.strip().strip("/"), namespace.strip("/")) if part]
    return "/" + "/".join(parts)


def resolve_topic(namespace: str, topic: str) -> str:
    """The absolute name of `topic` for a node in the absolute `namespace`."""
    if topic.startswith("/"):
        return topic
    return f"{namespace.rstrip('/')}/{topic}"


def _check_name(what: str, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise LaunchError(
            f"{what} {name!r} is not a valid ROS name (tokens of letters, digits and '_', "
            "not starting with a digit, separated by '/')"
        )


def parse_bool(name: str, text: str) -> bool:
    """A true/false launch argument (any case)."""
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise LaunchError(f"{name} must be true or false, got {text!r}")
    return value == "true"


def parse_cameras(text: str, base_namespace: str = "") -> list[Camera]:
    """`cameras:=front:/front/image_raw,rear:rear/image_raw`: one camera per comma-separated
    `namespace:topic` item; namespaces are relative to `base_namespace` unless absolute, relative
    topics resolve in the camera's namespace."""
    cameras: list[Camera] = []
    for item in text.split(","):
        namespace, colon, image = (part.strip() for part in item.partition(":"))
        if not colon or not namespace or not image:
            raise LaunchError(
                f"cameras: item {item.strip()!r} is not namespace:topic "
                "(e.g. cameras:=front:/front/image_raw,rear:/rear/image_raw)"
            )
        _check_name(f"cameras: namespace in {item.strip()!r}", namespace)
        _check_name(f"cameras: topic in {item.strip()!r}", image)
        camera = Camera(join_namespace(base_namespace, namespace), image)
        if any(other.namespace == camera.namespace for other in cameras):
            raise LaunchError(
                f"cameras: namespace {camera.namespace} is given twice; each camera's segmenter "
                "needs a namespace of its own"
            )
        cameras.append(camera)
    return cameras


def parse_vocabulary(text: str) -> list[str]:
    """`"['person', 'chair']"` (a YAML list) or `person,chair`."""
    text = text.strip()
    if not text.startswith("["):
        return [name.strip() for name in text.split(",")]
    try:
        names = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LaunchError(f"vocabulary {text!r} is not a YAML list: {exc}") from exc
    return [str(name).strip() for name in names]


def parameter_overrides(values: Mapping[str, str]) -> dict[str, Any]:
    """The parameters every segmenter gets on top of the params file: the input transport from
    `compressed`, the vocabulary and the pass-through arguments that are not empty."""
    compressed = parse_bool("compressed", values["compressed"])
    overrides: dict[str, Any] = {"input_transport": "compressed" if compressed else "raw"}
    if values["vocabulary"].strip():
        overrides["vocabulary"] = parse_vocabulary(values["vocabulary"])
    for name in PASS_THROUGH:
        if values[name].strip():
            overrides[name] = values[name].strip()
    return overrides


def segmenter_spec(camera: Camera, params_file: str, parameters: dict[str, Any]) -> SegmenterSpec:
    """The node of one camera: in the camera's namespace, `image` (or `image/compressed`)
    remapped to the camera's topic; `parameters` from `parameter_overrides`."""
    suffix = "/compressed" if parameters["input_transport"] == "compressed" else ""
    return SegmenterSpec(
        namespace=camera.namespace,
        params_file=params_file,
        parameters=parameters,
        remappings=((f"image{suffix}", f"{camera.image}{suffix}"),),
        input_topic=resolve_topic(camera.namespace, camera.image) + suffix,
    )


def rviz_config(segmenters: list[SegmenterSpec], template: Mapping[str, Any]) -> dict[str, Any]:
    """`template` (config/ovseg.rviz) with its displays replaced: per segmenter, an Image display
    of the overlay (shown) and one of the input (ticked off: it costs a second image stream)."""
    displays = []
    for spec in segmenters:
        suffix = "" if spec.namespace == "/" else f" {spec.namespace}"
        displays.append(_image_display(f"ovseg overlay{suffix}", spec.overlay_topic, True))
        displays.append(_image_display(f"camera{suffix}", spec.input_topic, False))
    config = dict(template)
    config["Visualization Manager"] = {**template["Visualization Manager"], "Displays": displays}
    return config


def _image_display(name: str, topic: str, enabled: bool) -> dict[str, Any]:
    return {
        "Class": "rviz_default_plugins/Image",
        "Enabled": enabled,
        "Name": name,
        "Normalize Range": True,
        "Topic": {
            "Depth": 1,
            "Durability Policy": "Volatile",
            "History Policy": "Keep Last",
            # The overlay is published reliably; a camera may publish best effort only.
            "Reliability Policy": "Reliable" if enabled else "Best Effort",
            "Value": topic,
        },
        "Value": enabled,
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
    if values["cameras"].strip():
        cameras = parse_cameras(values["cameras"], base)
    else:
        image = values["image"].strip()
        _check_name("image", image)
        cameras = [Camera(base, image)]
    parameters = parameter_overrides(values)
    segmenters = [segmenter_spec(c, values["params_file"], parameters) for c in cameras]
    if not parse_bool("rviz", values["rviz"]):
        return LaunchPlan(segmenters)
    if find_rviz(ament_prefix_path) is None:
        raise LaunchError(RVIZ_MISSING)
    return LaunchPlan(segmenters, rviz_config(segmenters, rviz_template))


def segmenter_exit_message(node_name: str, returncode: int) -> str:
    """Why the launch stops when a segmenter exits on its own."""
    if returncode < 0:
        how = f"was killed by signal {-returncode}"
    elif returncode == 0:
        how = "stopped"
    else:
        how = f"exited with code {returncode} (its error is above)"
    return f"segmenter {node_name} {how}; stopping the launch"
