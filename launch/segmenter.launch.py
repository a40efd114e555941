"""Launches ovseg_segmenter (one per camera) and, optionally, RViz2 showing the overlay.

ros2 launch ovseg_ros segmenter.launch.py image:=/camera/color/image_raw
ros2 launch ovseg_ros segmenter.launch.py cameras:=front:/front/image_raw,rear:/rear/image_raw
ros2 launch ovseg_ros segmenter.launch.py vocabulary:="['person', 'chair']" rviz:=true
"""

from pathlib import Path

import yaml
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

SHARE = Path(get_package_share_directory("ovseg_ros"))


def _segmenters(context):
    """One segmenter node per camera: `cameras` (ns:topic,...) or the single `image` topic."""
    value = LaunchConfiguration("cameras").perform(context).strip()
    if value:
        cameras = [tuple(item.split(":", 1)) for item in value.split(",") if item.strip()]
    else:
        namespace = LaunchConfiguration("namespace").perform(context)
        cameras = [(namespace, LaunchConfiguration("image").perform(context))]
    compressed = LaunchConfiguration("compressed").perform(context).lower() == "true"
    overrides = {"input_transport": "compressed" if compressed else "raw"}
    vocabulary = LaunchConfiguration("vocabulary").perform(context).strip()
    if vocabulary:
        names = yaml.safe_load(vocabulary) if vocabulary.startswith("[") else vocabulary.split(",")
        overrides["vocabulary"] = [str(name).strip() for name in names]
    params_file = LaunchConfiguration("params_file").perform(context)
    nodes = []
    for namespace, image_topic in cameras:
        input_topic = "image/compressed" if compressed else "image"
        source = f"{image_topic}/compressed" if compressed else image_topic
        nodes.append(
            Node(
                package="ovseg_ros",
                executable="ovseg_segmenter",
                namespace=namespace.strip(),
                parameters=[params_file, overrides],
                remappings=[(input_topic, source.strip())],
                output="screen",
            )
        )
    return nodes


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "image",
                default_value="/camera/color/image_raw",
                description="Input image topic (sensor_msgs/Image).",
            ),
            DeclareLaunchArgument(
                "compressed",
                default_value="false",
                description="Subscribe to <image>/compressed instead.",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=str(SHARE / "config" / "segmenter.yaml"),
                description="Parameter YAML for the segmenter.",
            ),
            DeclareLaunchArgument(
                "namespace", default_value="", description="Namespace of the segmenter node."
            ),
            DeclareLaunchArgument(
                "cameras",
                default_value="",
                description="Several cameras: ns:topic,ns:topic (one node each).",
            ),
            DeclareLaunchArgument(
                "vocabulary",
                default_value="",
                description="Vocabulary override, e.g. \"['person', 'chair']\".",
            ),
            DeclareLaunchArgument(
                "rviz", default_value="false", description="Start RViz2 with config/ovseg.rviz."
            ),
            OpaqueFunction(function=_segmenters),
            Node(
                package="rviz2",
                executable="rviz2",
                arguments=["-d", str(SHARE / "config" / "ovseg.rviz")],
                condition=IfCondition(LaunchConfiguration("rviz")),
            ),
        ]
    )
