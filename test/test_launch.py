"""segmenter.launch.py's decisions (ovseg_ros.launch_plan), its wiring run against stand-ins for
`launch` and `launch_ros` (neither is installable here), and a segmenter process started in a
namespace with the arguments the plan gives it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from tiny_model import TINY_CHECKPOINT, TINY_MODEL

from ovseg_ros import launch_plan
from ovseg_ros.cameras import CameraTopics, parse_cameras
from ovseg_ros.launch_plan import PASS_THROUGH, CameraView, LaunchError, plan_launch

LAUNCH_FILE = REPO_ROOT / "launch" / "segmenter.launch.py"
RVIZ_TEMPLATE = yaml.safe_load((REPO_ROOT / "config" / "ovseg.rviz").read_text())
PARAMS_FILE = str(REPO_ROOT / "config" / "segmenter.yaml")
DEPTH = "camera/aligned_depth_to_color/image_raw"


def _values(**given: str) -> dict[str, str]:
    """Every launch argument at its default, except those given."""
    values = {a.name: a.default for a in launch_plan.launch_arguments(PARAMS_FILE)}
    assert set(given) <= set(values), set(given) - set(values)
    return {**values, **given}


def _fake_rviz_prefix(tmp_path: Path) -> str:
    program = tmp_path / "lib" / "rviz2" / "rviz2"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    return str(tmp_path)


def _displays(values: dict[str, str], tmp_path: Path) -> list[dict]:
    """The RViz displays of the plan for `values`, read back from the written config."""
    plan = plan_launch(values, RVIZ_TEMPLATE, ament_prefix_path=_fake_rviz_prefix(tmp_path))
    path = launch_plan.write_rviz_config(plan.rviz_config)
    try:
        config = yaml.safe_load(path.read_text())
    finally:
        path.unlink()
    return config["Visualization Manager"]["Displays"]


def test_arguments_are_the_documented_ones_with_empty_pass_through_defaults():
    arguments = {a.name: a for a in launch_plan.launch_arguments(PARAMS_FILE)}
    assert list(arguments) == [
        "image",
        "depth",
        "camera_info",
        "compressed",
        "params_file",
        "namespace",
        "cameras",
        "camera_processes",
        "vocabulary",
        "use_sim_time",
        "rviz",
        "fixed_frame",
        "model",
        "pretrained",
        "checkpoint",
        "device",
        "precision",
        "classifier",
        "proposal_generator",
        "proposal_checkpoint",
        "proposal_model",
    ]
    assert arguments["image"].default == "camera/color/image_raw"
    assert arguments["depth"].default == arguments["camera_info"].default == ""
    assert arguments["camera_processes"].default == "one"
    assert arguments["use_sim_time"].default == "false"
    assert arguments["fixed_frame"].default == "camera_color_optical_frame"
    assert arguments["params_file"].default == PARAMS_FILE
    assert all(arguments[name].default == "" for name in PASS_THROUGH)
    assert all(a.description for a in arguments.values())


@pytest.mark.parametrize("namespace", ["", "/"])
@pytest.mark.parametrize("processes", ["one", "each", " Each "])
def test_defaults_start_one_segmenter_that_overrides_only_transport_clock_and_depth(
    namespace, processes
):
    values = _values(namespace=namespace, camera_processes=processes)
    plan = plan_launch(values, RVIZ_TEMPLATE)
    (spec,) = plan.segmenters
    assert plan.rviz_config is None
    assert spec.namespace == "/"
    assert spec.full_name == "/ovseg_segmenter"
    assert spec.params_file == PARAMS_FILE
    assert spec.parameters == {"input_transport": "raw", "use_sim_time": False, "use_depth": False}
    assert spec.remappings == (("image", "/camera/color/image_raw"),)
    assert spec.cameras == (
        CameraView("/", "/camera/color/image_raw", "/ovseg_segmenter/overlay", ""),
    )


@pytest.mark.parametrize("name", PASS_THROUGH)
def test_each_pass_through_argument_overrides_its_parameter_only_when_given(name):
    (spec,) = plan_launch(_values(**{name: " value-of-it "}), RVIZ_TEMPLATE).segmenters
    assert spec.parameters == {
        "input_transport": "raw",
        "use_sim_time": False,
        "use_depth": False,
        name: "value-of-it",
    }


@pytest.mark.parametrize(("processes", "nodes"), [("one", 1), ("each", 2)])
def test_pass_through_reaches_every_camera(processes, nodes):
    values = _values(
        cameras="front:/front/image,rear:/rear/image",
        camera_processes=processes,
        checkpoint="/w.safetensors",
    )
    specs = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert [s.parameters["checkpoint"] for s in specs] == ["/w.safetensors"] * nodes
    assert all("pretrained" not in s.parameters for s in specs)


def test_namespace_applies_to_the_relative_default_topic_and_the_outputs():
    (spec,) = plan_launch(_values(namespace="robot1"), RVIZ_TEMPLATE).segmenters
    assert spec.namespace == "/robot1"
    assert spec.full_name == "/robot1/ovseg_segmenter"
    assert spec.remappings == (("image", "/robot1/camera/color/image_raw"),)
    (camera,) = spec.cameras
    assert camera.input_topic == "/robot1/camera/color/image_raw"
    assert camera.overlay_topic == "/robot1/ovseg_segmenter/overlay"


def test_absolute_image_topic_stays_absolute_in_a_namespace():
    values = _values(namespace="/robot1", image="/cam/image_raw")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert spec.remappings == (("image", "/cam/image_raw"),)
    assert spec.cameras[0].input_topic == "/cam/image_raw"


def test_namespace_pushed_by_an_including_launch_file_comes_first():
    values = _values(namespace="robot1")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE, base_namespace="/fleet").segmenters
    assert spec.cameras == (
        CameraView(
            "/fleet/robot1",
            "/fleet/robot1/camera/color/image_raw",
            "/fleet/robot1/ovseg_segmenter/overlay",
        ),
    )


def test_compressed_remaps_and_shows_the_compressed_topic():
    values = _values(compressed="True", image="/cam/image_raw")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert spec.parameters["input_transport"] == "compressed"
    assert spec.remappings == (("image/compressed", "/cam/image_raw/compressed"),)
    assert spec.cameras[0].input_topic == "/cam/image_raw/compressed"


@pytest.mark.parametrize("text", ["['person', 'chair']", "person, chair", "[person, chair]"])
def test_vocabulary_as_yaml_list_or_comma_separated(text):
    (spec,) = plan_launch(_values(vocabulary=text), RVIZ_TEMPLATE).segmenters
    assert spec.parameters["vocabulary"] == ["person", "chair"]


@pytest.mark.parametrize(
    ("given", "nodes"),
    [({}, 1), ({"cameras": "a:/a/image,b:/b/image"}, 1),
     ({"cameras": "a:/a/image,b:/b/image", "camera_processes": "each"}, 2)],
)  # fmt: skip
def test_use_sim_time_reaches_every_segmenter_as_the_ros_parameter(given, nodes):
    plan = plan_launch(_values(use_sim_time=" True ", **given), RVIZ_TEMPLATE)
    assert plan.use_sim_time is True
    assert [s.parameters["use_sim_time"] for s in plan.segmenters] == [True] * nodes
    for spec in plan.segmenters:
        assert "use_sim_time:=true" in spec.ros_arguments()
    assert not plan_launch(_values(**given), RVIZ_TEMPLATE).use_sim_time


# --- depth ---------------------------------------------------------------------------------------


def test_depth_sets_use_depth_and_remaps_depth_and_the_camera_info_beside_the_image():
    values = _values(namespace="robot1", depth=f" {DEPTH} ")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert spec.parameters == {"input_transport": "raw", "use_sim_time": False, "use_depth": True}
    assert spec.remappings == (
        ("image", "/robot1/camera/color/image_raw"),
        ("depth", "/robot1/camera/aligned_depth_to_color/image_raw"),
        ("camera_info", "/robot1/camera/color/camera_info"),
    )
    assert spec.cameras == (
        CameraView(
            "/robot1",
            "/robot1/camera/color/image_raw",
            "/robot1/ovseg_segmenter/overlay",
            "/robot1/ovseg_segmenter/points",
        ),
    )


@pytest.mark.parametrize(
    ("camera_info", "remapped"),
    [
        ("/cam/color/camera_info", "/cam/color/camera_info"),
        ("camera/info", "/robot1/camera/info"),
    ],
)
def test_camera_info_overrides_the_one_beside_the_image(camera_info, remapped):
    values = _values(namespace="robot1", depth=DEPTH, camera_info=camera_info)
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert spec.remappings[-1] == ("camera_info", remapped)


def test_camera_info_beside_an_absolute_image_topic():
    values = _values(namespace="robot1", image="/cam/color/image_raw", depth="/cam/depth")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert spec.remappings == (
        ("image", "/cam/color/image_raw"),
        ("depth", "/cam/depth"),
        ("camera_info", "/cam/color/camera_info"),
    )


def test_compressed_with_depth_remaps_the_compressed_image_and_the_raw_depth():
    values = _values(compressed="true", image="/cam/color/image_raw", depth="/cam/depth")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert spec.parameters == {
        "input_transport": "compressed",
        "use_sim_time": False,
        "use_depth": True,
    }
    assert spec.remappings == (
        ("image/compressed", "/cam/color/image_raw/compressed"),
        ("depth", "/cam/depth"),
        ("camera_info", "/cam/color/camera_info"),
    )
    assert spec.cameras[0].input_topic == "/cam/color/image_raw/compressed"


def test_ros_arguments_with_depth():
    values = _values(image="/cam/color/image_raw", depth="/cam/depth")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert spec.ros_arguments()[7:] == [
        "-r", "image:=/cam/color/image_raw",
        "-r", "depth:=/cam/depth",
        "-r", "camera_info:=/cam/color/camera_info",
        "-p", 'input_transport:="raw"',
        "-p", "use_sim_time:=false",
        "-p", "use_depth:=true",
    ]  # fmt: skip


# --- several cameras -----------------------------------------------------------------------------

CAMERAS = " front:image_raw:depth/image_raw , /rear:/rear/image_raw"


def test_cameras_in_one_process_one_segmenter_with_every_camera_as_absolute_topics():
    values = _values(namespace="robot1", cameras=CAMERAS, model="m")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert spec.namespace == "/robot1"
    assert spec.full_name == "/robot1/ovseg_segmenter"
    assert spec.remappings == ()
    assert spec.parameters == {
        "input_transport": "raw",
        "use_sim_time": False,
        "model": "m",
        "cameras": [
            "/robot1/front:/robot1/front/image_raw:/robot1/front/depth/image_raw"
            ":/robot1/front/camera_info",
            "/rear:/rear/image_raw",
        ],
    }
    assert spec.cameras == (
        CameraView(
            "/robot1/front",
            "/robot1/front/image_raw",
            "/robot1/front/ovseg_segmenter/overlay",
            "/robot1/front/ovseg_segmenter/points",
        ),
        CameraView("/rear", "/rear/image_raw", "/rear/ovseg_segmenter/overlay"),
    )


def test_cameras_parameter_reads_back_with_the_nodes_parser():
    values = _values(cameras="front:/f/image:/f/depth:/f/info,rear:/r/image:/r/depth")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert parse_cameras(spec.parameters["cameras"]) == [
        CameraTopics("/front", "/f/image", "/f/depth", "/f/info"),
        CameraTopics("/rear", "/r/image", "/r/depth", "/r/camera_info"),
    ]


def test_cameras_one_segmenter_each_in_its_namespace_under_namespace():
    values = _values(namespace="robot1", cameras=CAMERAS, camera_processes="each")
    front, rear = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert front.namespace == "/robot1/front"
    assert front.full_name == "/robot1/front/ovseg_segmenter"
    assert front.parameters == {"input_transport": "raw", "use_sim_time": False, "use_depth": True}
    assert front.remappings == (
        ("image", "/robot1/front/image_raw"),
        ("depth", "/robot1/front/depth/image_raw"),
        ("camera_info", "/robot1/front/camera_info"),
    )
    assert rear.namespace == "/rear"
    assert rear.parameters == {"input_transport": "raw", "use_sim_time": False, "use_depth": False}
    assert rear.remappings == (("image", "/rear/image_raw"),)
    one_process = plan_launch(_values(namespace="robot1", cameras=CAMERAS), RVIZ_TEMPLATE)
    assert front.cameras + rear.cameras == one_process.segmenters[0].cameras


def test_compressed_cameras_in_one_process_leave_the_subscription_to_the_node():
    values = _values(compressed="true", cameras="front:/f/image:/f/depth,rear:/r/image")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert spec.remappings == ()
    assert spec.parameters == {
        "input_transport": "compressed",
        "use_sim_time": False,
        "cameras": ["/front:/f/image:/f/depth:/f/camera_info", "/rear:/r/image"],
    }
    assert [c.input_topic for c in spec.cameras] == ["/f/image/compressed", "/r/image/compressed"]


def test_compressed_cameras_each_remap_their_compressed_image():
    values = _values(
        compressed="true", cameras="front:/f/image:/f/depth,rear:/r/image", camera_processes="each"
    )
    front, rear = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert front.remappings == (
        ("image/compressed", "/f/image/compressed"),
        ("depth", "/f/depth"),
        ("camera_info", "/f/camera_info"),
    )
    assert rear.remappings == (("image/compressed", "/r/image/compressed"),)
    assert [s.cameras[0].input_topic for s in (front, rear)] == [
        "/f/image/compressed",
        "/r/image/compressed",
    ]


def test_ros_arguments_of_one_process_pass_the_cameras_as_a_string_array():
    values = _values(cameras="front:/f/image,rear:/r/image:/r/depth")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    *_, flag, cameras = spec.ros_arguments()
    assert flag == "-p"
    assert cameras == 'cameras:=["/front:/f/image", "/rear:/r/image:/r/depth:/r/camera_info"]'
    assert yaml.safe_load(cameras.partition(":=")[2]) == spec.parameters["cameras"]


def test_a_relative_and_an_absolute_camera_namespace_differ_under_namespace():
    values = _values(namespace="robot1", cameras="front:/a,/front:/b")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert [c.namespace for c in spec.cameras] == ["/robot1/front", "/front"]


@pytest.mark.parametrize("processes", ["one", "each"])
@pytest.mark.parametrize(
    ("cameras", "named"),
    [
        ("front", "camera 'front' is not NAMESPACE:IMAGE[:DEPTH[:CAMERA_INFO]]"),
        ("front:", "camera 'front:' is not"),
        (":/front/image", "camera ':/front/image' is not"),
        ("front:/a,,rear:/b", "camera '' is not"),
        ("front:/a,", "camera '' is not"),
        ("front:/a:/d:/i:/x", "camera 'front:/a:/d:/i:/x' is not"),
        ("front:/a::/i", "camera 'front:/a::/i' is not"),
        ("front:/a:/d:", "camera 'front:/a:/d:' is not"),
        ("front:/a,front:/b", "namespace '/robot1/front' is given twice"),
        ("front:/a,/robot1/front:/b", "namespace '/robot1/front' is given twice"),
        ("1front:/a", "'1front:/a': namespace '1front' is not a valid ROS name"),
        ("front:/a b", "'front:/a b': image topic '/a b'"),
        ("front:/a//b", "'front:/a//b': image topic '/a//b'"),
        ("front:~/image", "'front:~/image': image topic '~/image'"),
        ("front:/a:/d-1", "'front:/a:/d-1': depth topic '/d-1'"),
        ("front:/a:/d:info x", "'front:/a:/d:info x': camera_info topic 'info x'"),
    ],
)
def test_bad_cameras_are_refused_on_one_line_naming_the_item(cameras, named, processes):
    values = _values(namespace="robot1", cameras=cameras, camera_processes=processes)
    with pytest.raises(LaunchError, match="^cameras: camera ") as error:
        plan_launch(values, RVIZ_TEMPLATE)
    assert named in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"namespace": "robot 1"}, "namespace 'robot 1'"),
        ({"image": ""}, "image ''"),
        ({"depth": "/a depth"}, "depth '/a depth'"),
        ({"depth": DEPTH, "camera_info": "a:b"}, "camera_info 'a:b'"),
        ({"camera_info": "/cam/info"}, "camera_info is only used with depth"),
        ({"cameras": "a:/a", "depth": DEPTH}, "depth is for the single camera"),
        ({"cameras": "a:/a", "camera_info": "/i"}, "camera_info is for the single camera"),
        ({"camera_processes": "both"}, "camera_processes must be one or each, got 'both'"),
        ({"camera_processes": ""}, "camera_processes must be one or each, got ''"),
        ({"rviz": "yes"}, "rviz must be true or false"),
        ({"rviz": "true", "fixed_frame": " "}, "fixed_frame must not be empty"),
        ({"compressed": "1"}, "compressed must be true or false"),
        ({"use_sim_time": "yes"}, "use_sim_time must be true or false, got 'yes'"),
        ({"vocabulary": "[person, chair"}, "vocabulary '\\[person, chair' is not a YAML list"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(given, named):
    with pytest.raises(LaunchError, match=named) as error:
        plan_launch(_values(**given), RVIZ_TEMPLATE)
    assert "\n" not in str(error.value)


# --- RViz2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("processes", ["one", "each"])
def test_rviz_config_shows_overlay_input_and_points_of_each_camera(tmp_path, processes):
    values = _values(namespace="robot1", cameras=CAMERAS, camera_processes=processes, rviz="true")
    displays = _displays(values, tmp_path)
    assert [(d["Class"], d["Name"], d["Topic"]["Value"], d["Enabled"]) for d in displays] == [
        (
            "rviz_default_plugins/Image",
            "ovseg overlay /robot1/front",
            "/robot1/front/ovseg_segmenter/overlay",
            True,
        ),
        ("rviz_default_plugins/Image", "camera /robot1/front", "/robot1/front/image_raw", False),
        (
            "rviz_default_plugins/PointCloud2",
            "ovseg points /robot1/front",
            "/robot1/front/ovseg_segmenter/points",
            True,
        ),
        (
            "rviz_default_plugins/Image",
            "ovseg overlay /rear",
            "/rear/ovseg_segmenter/overlay",
            True,
        ),
        ("rviz_default_plugins/Image", "camera /rear", "/rear/image_raw", False),
    ]
    points = displays[2]
    assert points["Color Transformer"] == "RGB8"
    assert points["Style"] == "Points"
    assert points["Size (Pixels)"] == 3
    assert points["Topic"]["Reliability Policy"] == "Reliable"
    assert points["Topic"]["Depth"] == 1


def test_rviz_config_is_the_template_with_displays_and_fixed_frame_replaced(tmp_path):
    values = _values(cameras="a:/a/image,b:/b/image", rviz="true", fixed_frame=" base_link ")
    plan = plan_launch(values, RVIZ_TEMPLATE, ament_prefix_path=_fake_rviz_prefix(tmp_path))
    manager = plan.rviz_config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "base_link"
    assert [d["Class"] for d in manager["Displays"]] == ["rviz_default_plugins/Image"] * 4
    template = RVIZ_TEMPLATE["Visualization Manager"]
    options = {**template["Global Options"], "Fixed Frame": "base_link"}
    expected = {**template, "Displays": manager["Displays"], "Global Options": options}
    assert plan.rviz_config == {**RVIZ_TEMPLATE, "Visualization Manager": expected}


def test_rviz_config_of_the_single_camera_without_depth_has_no_points(tmp_path):
    displays = _displays(_values(rviz="true", compressed="true"), tmp_path)
    assert [(d["Name"], d["Topic"]["Value"]) for d in displays] == [
        ("ovseg overlay", "/ovseg_segmenter/overlay"),
        ("camera", "/camera/color/image_raw/compressed"),
    ]


def test_shipped_rviz_config_is_what_the_plan_writes_for_the_default_camera_with_depth(tmp_path):
    plan = plan_launch(
        _values(rviz="true", depth=DEPTH),
        RVIZ_TEMPLATE,
        ament_prefix_path=_fake_rviz_prefix(tmp_path),
    )
    assert plan.rviz_config == RVIZ_TEMPLATE
    fixed_frame = RVIZ_TEMPLATE["Visualization Manager"]["Global Options"]["Fixed Frame"]
    assert fixed_frame == "camera_color_optical_frame"


def test_rviz_missing_stops_the_launch_with_how_to_install_it(tmp_path):
    not_executable = tmp_path / "other" / "lib" / "rviz2" / "rviz2"
    not_executable.parent.mkdir(parents=True)
    not_executable.write_text("")
    prefix_path = f"{tmp_path / 'empty'}:{tmp_path / 'other'}"
    with pytest.raises(LaunchError) as error:
        plan_launch(_values(rviz="true"), RVIZ_TEMPLATE, ament_prefix_path=prefix_path)
    message = str(error.value)
    assert "RViz2 is not installed" in message
    assert "sudo apt install ros-$ROS_DISTRO-rviz2" in message
    assert "rviz:=false" in message and "Nothing was started" in message


def test_rviz_found_on_the_ament_prefix_path(tmp_path):
    prefix_path = f"{tmp_path / 'empty'}:{_fake_rviz_prefix(tmp_path / 'ros')}"
    assert launch_plan.find_rviz(prefix_path) == tmp_path / "ros" / "lib" / "rviz2" / "rviz2"
    assert launch_plan.find_rviz("") is None


def test_ros_arguments_match_the_spec():
    values = _values(namespace="robot1", vocabulary="person,chair", model="on")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert spec.ros_arguments() == [
        "--ros-args",
        "-r", "__node:=ovseg_segmenter",
        "-r", "__ns:=/robot1",
        "--params-file", PARAMS_FILE,
        "-r", "image:=/robot1/camera/color/image_raw",
        "-p", 'input_transport:="raw"',
        "-p", "use_sim_time:=false",
        "-p", 'vocabulary:=["person", "chair"]',
        "-p", 'model:="on"',
        "-p", "use_depth:=false",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("returncode", "how"),
    [
        (1, "exited with code 1 (its error is above)"),
        (-11, "was killed by signal 11"),
        (0, "stopped"),
    ],
)
def test_segmenter_exit_message(returncode, how):
    message = launch_plan.segmenter_exit_message("/robot1/ovseg_segmenter", returncode)
    assert message == f"segmenter /robot1/ovseg_segmenter {how}; stopping the launch"


# --- the launch file, run against stand-ins for launch and launch_ros --------------------------


class _Action:
    """Stands in for a launch action: keeps what it was made with."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


class _LaunchConfiguration:
    def __init__(self, name: str):
        self.name = name

    def perform(self, context) -> str:
        return context.launch_configurations[self.name]


def _load_launch_file(monkeypatch) -> types.ModuleType:
    """Imports segmenter.launch.py with `launch`, `launch_ros` and the ament index faked."""
    modules = {
        "launch": {"LaunchContext": object, "LaunchDescription": _Action},
        "launch.actions": {
            name: type(name, (_Action,), {})
            for name in (
                "DeclareLaunchArgument",
                "OpaqueFunction",
                "RegisterEventHandler",
                "Shutdown",
            )
        },
        "launch.event_handlers": {"OnProcessExit": type("OnProcessExit", (_Action,), {})},
        "launch.substitutions": {"LaunchConfiguration": _LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": type("Node", (_Action,), {})},
        "ament_index_python.packages": {"get_package_share_directory": lambda _: REPO_ROOT},
    }
    for name, attributes in modules.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))
    spec = importlib.util.spec_from_file_location("segmenter_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _context(**given: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(launch_configurations=_values(**given), is_shutdown=False)


def test_launch_file_declares_the_plans_arguments_and_runs_one_opaque_function(monkeypatch):
    module = _load_launch_file(monkeypatch)
    description = module.generate_launch_description()
    *declarations, opaque = description.args[0]
    expected = launch_plan.launch_arguments(str(REPO_ROOT / "config" / "segmenter.yaml"))
    assert [(d.args[0], d.kwargs) for d in declarations] == [
        (a.name, {"default_value": a.default, "description": a.description}) for a in expected
    ]
    assert type(opaque).__name__ == "OpaqueFunction"


def test_launch_file_starts_the_planned_nodes_and_stops_on_a_segmenter_exit(monkeypatch, tmp_path):
    module = _load_launch_file(monkeypatch)
    monkeypatch.setenv("AMENT_PREFIX_PATH", _fake_rviz_prefix(tmp_path))
    context = _context(
        cameras="front:/front/image,rear:/rear/image",
        camera_processes="each",
        model="m",
        rviz="true",
    )
    actions = module._launch_setup(context)
    nodes = [a for a in actions if type(a).__name__ == "Node"]
    handlers = [a.args[0] for a in actions if type(a).__name__ == "RegisterEventHandler"]
    assert [n.kwargs["namespace"] for n in nodes[:2]] == ["/front", "/rear"]
    assert nodes[0].kwargs["name"] == "ovseg_segmenter"
    assert nodes[0].kwargs["parameters"] == [
        str(REPO_ROOT / "config" / "segmenter.yaml"),
        {"input_transport": "raw", "use_sim_time": False, "model": "m", "use_depth": False},
    ]
    assert nodes[0].kwargs["remappings"] == [("image", "/front/image")]
    rviz = nodes[2]
    assert rviz.kwargs["package"] == "rviz2"
    assert rviz.kwargs["parameters"] == [{"use_sim_time": False}]
    rviz_file = Path(rviz.kwargs["arguments"][1])
    displays = yaml.safe_load(rviz_file.read_text())["Visualization Manager"]["Displays"]
    rviz_file.unlink()
    assert "/rear/ovseg_segmenter/overlay" in [d["Topic"]["Value"] for d in displays]

    assert [h.kwargs["target_action"] for h in handlers] == nodes[:2]
    on_exit = handlers[1].kwargs["on_exit"]
    with pytest.raises(LaunchError, match="/rear/ovseg_segmenter exited with code 1"):
        on_exit(types.SimpleNamespace(returncode=1), context)
    (shutdown,) = on_exit(types.SimpleNamespace(returncode=0), context)
    assert shutdown.kwargs["reason"].startswith("segmenter /rear/ovseg_segmenter stopped")
    context.is_shutdown = True
    assert on_exit(types.SimpleNamespace(returncode=-2), context) is None


def test_launch_file_starts_one_segmenter_for_every_camera(monkeypatch, tmp_path):
    module = _load_launch_file(monkeypatch)
    monkeypatch.setenv("AMENT_PREFIX_PATH", _fake_rviz_prefix(tmp_path))
    context = _context(cameras="front:/f/image:/f/depth,rear:/r/image", rviz="true")
    actions = module._launch_setup(context)
    segmenter, rviz = [a for a in actions if type(a).__name__ == "Node"]
    assert segmenter.kwargs["namespace"] == "/"
    assert segmenter.kwargs["name"] == "ovseg_segmenter"
    assert segmenter.kwargs["remappings"] == []
    assert segmenter.kwargs["parameters"][1] == {
        "input_transport": "raw",
        "use_sim_time": False,
        "cameras": ["/front:/f/image:/f/depth:/f/camera_info", "/rear:/r/image"],
    }
    rviz_file = Path(rviz.kwargs["arguments"][1])
    config = yaml.safe_load(rviz_file.read_text())["Visualization Manager"]
    rviz_file.unlink()
    assert [d["Topic"]["Value"] for d in config["Displays"]] == [
        "/front/ovseg_segmenter/overlay",
        "/f/image",
        "/front/ovseg_segmenter/points",
        "/rear/ovseg_segmenter/overlay",
        "/r/image",
    ]
    assert config["Global Options"]["Fixed Frame"] == "camera_color_optical_frame"


def test_launch_file_with_rviz_missing_starts_nothing(monkeypatch, tmp_path):
    module = _load_launch_file(monkeypatch)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    with pytest.raises(LaunchError, match="RViz2 is not installed"):
        module._launch_setup(_context(rviz="true"))


# --- a segmenter process started as the plan says ----------------------------------------------


@pytest.mark.slow
def test_segmenter_process_in_a_namespace_uses_the_namespaced_topics(ros_context, tmp_path):
    from rcl_interfaces.srv import GetParameters
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import parameter_value_to_python
    from ros_helpers import call_service, spin_until

    # Until `checkpoint` overrides `pretrained` in the engine, the params file clears the tag.
    params = yaml.safe_load((REPO_ROOT / "config" / "segmenter.yaml").read_text())
    params["/**"]["ros__parameters"]["pretrained"] = ""
    params_file = tmp_path / "segmenter.yaml"
    params_file.write_text(yaml.safe_dump(params))
    values = _values(
        namespace="robot1",
        params_file=str(params_file),
        model=TINY_MODEL,
        checkpoint=str(TINY_CHECKPOINT),
        vocabulary="circle,square",
        use_sim_time="true",
    )
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    (camera,) = spec.cameras
    process = subprocess.Popen(
        [sys.executable, "-m", "ovseg_ros.ros.segmenter_node", *spec.ros_arguments()],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    node = Node("launch_checker", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)

    def stop() -> str:
        process.terminate()
        try:
            return process.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            return process.communicate()[0]

    try:
        client = node.create_client(GetParameters, "/robot1/ovseg_segmenter/get_parameters")
        names = ["model", "checkpoint", "vocabulary", "input_transport", "use_sim_time"]
        response = call_service(executor, client, GetParameters.Request(names=names))
        assert response is not None, stop()
        got = [parameter_value_to_python(v) for v in response.values]
        assert got == [TINY_MODEL, str(TINY_CHECKPOINT), ["circle", "square"], "raw", True]
        assert camera.input_topic == "/robot1/camera/color/image_raw"
        assert spin_until(
            executor,
            lambda: (
                bool(node.get_subscriptions_info_by_topic(camera.input_topic))
                and bool(node.get_publishers_info_by_topic(camera.overlay_topic))
            ),
        ), node.get_topic_names_and_types()
        assert camera.overlay_topic == "/robot1/ovseg_segmenter/overlay"
    finally:
        stop()
        node.destroy_node()
