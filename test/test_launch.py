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
from ovseg_ros.launch_plan import PASS_THROUGH, LaunchError, plan_launch

LAUNCH_FILE = REPO_ROOT / "launch" / "segmenter.launch.py"
RVIZ_TEMPLATE = yaml.safe_load((REPO_ROOT / "config" / "ovseg.rviz").read_text())
PARAMS_FILE = str(REPO_ROOT / "config" / "segmenter.yaml")


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


def test_arguments_are_the_documented_ones_with_empty_pass_through_defaults():
    arguments = {a.name: a for a in launch_plan.launch_arguments(PARAMS_FILE)}
    assert list(arguments) == [
        "image",
        "compressed",
        "params_file",
        "namespace",
        "cameras",
        "vocabulary",
        "rviz",
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
    assert arguments["params_file"].default == PARAMS_FILE
    assert all(arguments[name].default == "" for name in PASS_THROUGH)
    assert all(a.description for a in arguments.values())


@pytest.mark.parametrize("namespace", ["", "/"])
def test_defaults_start_one_segmenter_that_overrides_nothing_but_the_transport(namespace):
    plan = plan_launch(_values(namespace=namespace), RVIZ_TEMPLATE)
    (spec,) = plan.segmenters
    assert plan.rviz_config is None
    assert spec.namespace == "/"
    assert spec.params_file == PARAMS_FILE
    assert spec.parameters == {"input_transport": "raw"}
    assert spec.remappings == (("image", "camera/color/image_raw"),)
    assert spec.input_topic == "/camera/color/image_raw"
    assert spec.overlay_topic == "/ovseg_segmenter/overlay"


@pytest.mark.parametrize("name", PASS_THROUGH)
def test_each_pass_through_argument_overrides_its_parameter_only_when_given(name):
    (spec,) = plan_launch(_values(**{name: " value-of-it "}), RVIZ_TEMPLATE).segmenters
    assert spec.parameters == {"input_transport": "raw", name: "value-of-it"}


def test_pass_through_reaches_every_camera():
    values = _values(cameras="front:/front/image,rear:/rear/image", checkpoint="/w.safetensors")
    specs = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert [s.parameters["checkpoint"] for s in specs] == ["/w.safetensors"] * 2
    assert all("pretrained" not in s.parameters for s in specs)


def test_namespace_applies_to_the_relative_default_topic_and_the_outputs():
    (spec,) = plan_launch(_values(namespace="robot1"), RVIZ_TEMPLATE).segmenters
    assert spec.namespace == "/robot1"
    assert spec.full_name == "/robot1/ovseg_segmenter"
    assert spec.input_topic == "/robot1/camera/color/image_raw"
    assert spec.overlay_topic == "/robot1/ovseg_segmenter/overlay"


def test_absolute_image_topic_stays_absolute_in_a_namespace():
    values = _values(namespace="/robot1", image="/cam/image_raw")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert spec.remappings == (("image", "/cam/image_raw"),)
    assert spec.input_topic == "/cam/image_raw"


def test_namespace_pushed_by_an_including_launch_file_comes_first():
    values = _values(namespace="robot1")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE, base_namespace="/fleet").segmenters
    assert spec.overlay_topic == "/fleet/robot1/ovseg_segmenter/overlay"
    assert spec.input_topic == "/fleet/robot1/camera/color/image_raw"


def test_compressed_remaps_and_shows_the_compressed_topic():
    values = _values(compressed="True", image="/cam/image_raw")
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert spec.parameters["input_transport"] == "compressed"
    assert spec.remappings == (("image/compressed", "/cam/image_raw/compressed"),)
    assert spec.input_topic == "/cam/image_raw/compressed"


@pytest.mark.parametrize("text", ["['person', 'chair']", "person, chair", "[person, chair]"])
def test_vocabulary_as_yaml_list_or_comma_separated(text):
    (spec,) = plan_launch(_values(vocabulary=text), RVIZ_TEMPLATE).segmenters
    assert spec.parameters["vocabulary"] == ["person", "chair"]


def test_cameras_one_segmenter_each_in_its_namespace_under_namespace():
    values = _values(namespace="robot1", cameras=" front:image_raw , /rear:/rear/image_raw")
    front, rear = plan_launch(values, RVIZ_TEMPLATE).segmenters
    assert front.namespace == "/robot1/front"
    assert front.input_topic == "/robot1/front/image_raw"
    assert front.overlay_topic == "/robot1/front/ovseg_segmenter/overlay"
    assert rear.namespace == "/rear"
    assert rear.remappings == (("image", "/rear/image_raw"),)
    assert rear.overlay_topic == "/rear/ovseg_segmenter/overlay"


@pytest.mark.parametrize(
    ("cameras", "named"),
    [
        ("front", "'front' is not namespace:topic"),
        ("front:", "'front:' is not namespace:topic"),
        (":/front/image", "':/front/image' is not namespace:topic"),
        ("front:/a,,rear:/b", "'' is not namespace:topic"),
        ("front:/a,", "'' is not namespace:topic"),
        ("front:/a,front:/b", "namespace /front is given twice"),
        ("front:/a,/front:/b", "namespace /front is given twice"),
        ("1front:/a", "namespace in '1front:/a'"),
        ("front:/a b", "topic in 'front:/a b'"),
        ("front:/a//b", "topic in 'front:/a//b'"),
        ("front:~/image", "topic in 'front:~/image'"),
    ],
)
def test_bad_cameras_are_refused_naming_the_item(cameras, named):
    with pytest.raises(LaunchError, match="^cameras: ") as error:
        plan_launch(_values(cameras=cameras), RVIZ_TEMPLATE)
    assert named in str(error.value)


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"namespace": "robot 1"}, "namespace 'robot 1'"),
        ({"image": ""}, "image ''"),
        ({"rviz": "yes"}, "rviz must be true or false"),
        ({"compressed": "1"}, "compressed must be true or false"),
        ({"vocabulary": "[person, chair"}, "vocabulary '\\[person, chair' is not a YAML list"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(given, named):
    with pytest.raises(LaunchError, match=named):
        plan_launch(_values(**given), RVIZ_TEMPLATE)


def test_rviz_config_shows_overlay_and_input_of_each_camera(tmp_path):
    cameras = "front:image_raw,rear:/rear/image_raw"
    values = _values(namespace="robot1", cameras=cameras, rviz="true")
    plan = plan_launch(values, RVIZ_TEMPLATE, ament_prefix_path=_fake_rviz_prefix(tmp_path))
    path = launch_plan.write_rviz_config(plan.rviz_config)
    try:
        config = yaml.safe_load(path.read_text())
    finally:
        path.unlink()
    displays = config["Visualization Manager"]["Displays"]
    assert [(d["Name"], d["Topic"]["Value"], d["Enabled"]) for d in displays] == [
        ("ovseg overlay /robot1/front", "/robot1/front/ovseg_segmenter/overlay", True),
        ("camera /robot1/front", "/robot1/front/image_raw", False),
        ("ovseg overlay /robot1/rear", "/robot1/rear/ovseg_segmenter/overlay", True),
        ("camera /robot1/rear", "/rear/image_raw", False),
    ]
    assert {d["Class"] for d in displays} == {"rviz_default_plugins/Image"}
    manager = {**RVIZ_TEMPLATE["Visualization Manager"], "Displays": displays}
    assert config == {**RVIZ_TEMPLATE, "Visualization Manager": manager}


def test_shipped_rviz_config_is_what_the_plan_writes_for_the_default_camera(tmp_path):
    plan = plan_launch(
        _values(rviz="true"), RVIZ_TEMPLATE, ament_prefix_path=_fake_rviz_prefix(tmp_path)
    )
    assert plan.rviz_config == RVIZ_TEMPLATE


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
        "-r", "image:=camera/color/image_raw",
        "-p", 'input_transport:="raw"',
        "-p", 'vocabulary:=["person", "chair"]',
        "-p", 'model:="on"',
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
    context = _context(cameras="front:/front/image,rear:/rear/image", model="m", rviz="true")
    actions = module._launch_setup(context)
    nodes = [a for a in actions if type(a).__name__ == "Node"]
    handlers = [a.args[0] for a in actions if type(a).__name__ == "RegisterEventHandler"]
    assert [n.kwargs["namespace"] for n in nodes[:2]] == ["/front", "/rear"]
    assert nodes[0].kwargs["name"] == "ovseg_segmenter"
    assert nodes[0].kwargs["parameters"] == [
        str(REPO_ROOT / "config" / "segmenter.yaml"),
        {"input_transport": "raw", "model": "m"},
    ]
    assert nodes[0].kwargs["remappings"] == [("image", "/front/image")]
    rviz = nodes[2]
    assert rviz.kwargs["package"] == "rviz2"
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
    from ros_helpers import spin_until

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
    )
    (spec,) = plan_launch(values, RVIZ_TEMPLATE).segmenters
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
        assert client.wait_for_service(timeout_sec=60.0), stop()
        names = ["model", "checkpoint", "vocabulary", "input_transport"]
        future = client.call_async(GetParameters.Request(names=names))
        assert spin_until(executor, future.done)
        got = [parameter_value_to_python(v) for v in future.result().values]
        assert got == [TINY_MODEL, str(TINY_CHECKPOINT), ["circle", "square"], "raw"]
        assert spec.input_topic == "/robot1/camera/color/image_raw"
        assert spin_until(
            executor,
            lambda: (
                bool(node.get_subscriptions_info_by_topic(spec.input_topic))
                and bool(node.get_publishers_info_by_topic(spec.overlay_topic))
            ),
        ), node.get_topic_names_and_types()
        assert spec.overlay_topic == "/robot1/ovseg_segmenter/overlay"
    finally:
        stop()
        node.destroy_node()
