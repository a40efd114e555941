"""Launches ovseg_segmenter (one node for every camera, or one per camera) and, optionally, RViz2
showing each camera's overlay and, with depth, its points.

ros2 launch ovseg_ros segmenter.launch.py image:=/camera/color/image_raw
ros2 launch ovseg_ros segmenter.launch.py depth:=/camera/aligned_depth_to_color/image_raw rviz:=true
ros2 launch ovseg_ros segmenter.launch.py namespace:=robot1 rviz:=true
ros2 launch ovseg_ros segmenter.launch.py cameras:=front:/front/image:/front/depth,rear:/rear/image
ros2 launch ovseg_ros segmenter.launch.py camera_processes:=each cameras:=a:/a/image,b:/b/image
ros2 launch ovseg_ros segmenter.launch.py model:=ViT-B-16 pretrained:=openai device:=cuda
ros2 launch ovseg_ros segmenter.launch.py use_sim_time:=true   # a recording replayed with /clock

Thin wiring only: ovseg_ros.launch_plan decides what starts (and is tested without `launch`).
A bad argument, or rviz:=true without RViz2, stops the launch before anything starts; a
segmenter that exits on its own stops the whole launch, with exit code 1 unless it exited 0.
"""

import os
from pathlib import Path

import yaml
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchContext, LaunchDescription
from ovseg_ros.launch_plan import (
    LaunchError,
    SegmenterSpec,
    launch_arguments,
    plan_launch,
    segmenter_exit_message,
    write_rviz_config,
)

SHARE = Path(get_package_share_directory("ovseg_ros"))
ARGUMENTS = launch_arguments(params_file=str(SHARE / "config" / "segmenter.yaml"))


def _on_segmenter_exit(spec: SegmenterSpec):
    """OnProcessExit callback: stops the launch when the segmenter exits while it runs. Only an
    exception makes `ros2 launch` exit non-zero (LaunchService.run returns 1 and logs the
    message on one line); the Shutdown action alone would exit 0."""

    def on_exit(event, context: LaunchContext):
        if context.is_shutdown:
            return None
        message = segmenter_exit_message(spec.full_name, event.returncode)
        if event.returncode != 0:
            raise LaunchError(message)
        return [Shutdown(reason=message)]

    return on_exit


def _launch_setup(context: LaunchContext) -> list:
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in ARGUMENTS}
    plan = plan_launch(
        values,
        rviz_template=yaml.safe_load((SHARE / "config" / "ovseg.rviz").read_text()),
        base_namespace=context.launch_configurations.get("ros_namespace") or "",
        ament_prefix_path=os.environ.get("AMENT_PREFIX_PATH", ""),
    )
    actions = []
    for spec in plan.segmenters:
        node = Node(
            package="ovseg_ros",
            executable="ovseg_segmenter",
            name=spec.node_name,
            namespace=spec.namespace,
            parameters=[spec.params_file, spec.parameters],
            remappings=list(spec.remappings),
            output="screen",
        )
        exit_handler = OnProcessExit(target_action=node, on_exit=_on_segmenter_exit(spec))
        actions += [RegisterEventHandler(exit_handler), node]
    if plan.rviz_config is not None:
        rviz_file = write_rviz_config(plan.rviz_config)
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                arguments=["-d", str(rviz_file)],
                parameters=[{"use_sim_time": plan.use_sim_time}],
            )
        )
    return actions


def generate_launch_description() -> LaunchDescription:
    declarations = [
        DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
        for a in ARGUMENTS
    ]
    return LaunchDescription([*declarations, OpaqueFunction(function=_launch_setup)])
