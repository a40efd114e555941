"""The package's messages build, import, and cross real DDS unchanged."""

from __future__ import annotations

import math

import numpy as np
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from ros_helpers import spin_until
from std_msgs.msg import Header

from ovseg_ros.engine.geometry import SegmentGeometry
from ovseg_ros.engine.segmentation import UNLABELED, Segment, Segmentation
from ovseg_ros.msg import Segment as SegmentMsg
from ovseg_ros.msg import SegmentationResult, Vocabulary
from ovseg_ros.ros.conversions import segmentation_to_msg


def test_messages_have_documented_fields():
    assert SegmentationResult.UNLABELED == UNLABELED == 65535
    assert set(SegmentationResult.get_fields_and_field_types()) == {
        "header",
        "vocabulary_version",
        "class_names",
        "labels",
        "segments",
        "has_depth",
        "rejected_pixels",
    }
    assert SegmentMsg.get_fields_and_field_types() == {
        "class_id": "uint16",
        "class_name": "string",
        "score": "float",
        "roi": "sensor_msgs/RegionOfInterest",
        "mask": "sensor_msgs/Image",
        "area": "uint32",
        "has_3d": "boolean",
        "centroid": "geometry_msgs/Point",
        "box_min": "geometry_msgs/Point",
        "box_max": "geometry_msgs/Point",
        "valid_points": "uint32",
    }
    assert Vocabulary.get_fields_and_field_types()["colors"] == "sequence<std_msgs/ColorRGBA>"


def _three_segment_result() -> SegmentationResult:
    """A 480x640 label image with three rectangles of classes 0, 2, 1 on an unlabeled field;
    depth came with it, and the door (class 2) has 3D."""
    labels = np.full((480, 640), UNLABELED, dtype=np.uint16)
    boxes = [(0, (10, 20, 100, 50)), (2, (300, 200, 40, 120)), (1, (600, 400, 40, 80))]
    segments = []
    for class_id, (x, y, w, h) in boxes:
        labels[y : y + h, x : x + w] = class_id
        mask = np.ones((h, w), dtype=bool)
        mask[0, 0] = False
        labels[y, x] = UNLABELED
        segments.append(
            Segment(
                class_id,
                ["chair", "floor", "door"][class_id],
                0.25 + class_id / 4,
                (x, y, w, h),
                mask,
                int(mask.sum()),
            )
        )
    segments[1].geometry = SegmentGeometry(
        centroid=np.array([0.5, -0.25, 3.0], np.float32),
        box_min=np.array([0.25, -1.0, 2.75], np.float32),
        box_max=np.array([0.75, 0.5, 3.25], np.float32),
        points=4000,
    )
    segmentation = Segmentation(
        labels=labels,
        scores=np.zeros((480, 640), np.float32),
        class_names=["chair", "floor", "door"],
        vocabulary_version=7,
        segments=segments,
        has_depth=True,
        unknown=np.zeros((480, 640), bool),
    )
    segmentation.unknown[:2, :5] = True  # 10 pixels rejected as unknown
    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 1234, 567
    return segmentation_to_msg(segmentation, header)


def test_segmentation_result_crosses_dds_unchanged(ros_context):
    sent = _three_segment_result()
    publisher_node = Node("result_publisher", context=ros_context)
    subscriber_node = Node("result_subscriber", context=ros_context)
    received: list[SegmentationResult] = []
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    subscriber_node.create_subscription(SegmentationResult, "result", received.append, qos)
    publisher = publisher_node.create_publisher(SegmentationResult, "result", qos)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(subscriber_node)

    assert spin_until(executor, lambda: publisher.get_subscription_count() > 0)
    publisher.publish(sent)
    assert spin_until(executor, lambda: len(received) > 0)

    got = received[0]
    # Segments without 3D carry NaN points, and NaN != NaN: compare the serialized bytes.
    assert serialize_message(got) == serialize_message(sent)
    assert (got.header.stamp.sec, got.header.stamp.nanosec) == (1234, 567)
    assert got.labels.encoding == "mono16" and (got.labels.height, got.labels.width) == (480, 640)
    labels = np.frombuffer(bytes(got.labels.data), np.uint16).reshape(480, 640)
    assert labels[25, 15] == 0 and labels[250, 310] == 2 and labels[450, 610] == 1
    assert labels[20, 10] == UNLABELED and labels[0, 0] == UNLABELED
    assert [s.class_name for s in got.segments] == ["chair", "door", "floor"]
    assert [s.area for s in got.segments] == [4999, 4799, 3199]
    mask = np.frombuffer(bytes(got.segments[1].mask.data), np.uint8).reshape(120, 40)
    assert mask[0, 0] == 0 and mask[1, 1] == 255 and (mask == 255).sum() == 4799
    assert got.has_depth and [s.has_3d for s in got.segments] == [False, True, False]
    assert got.rejected_pixels == 10
    door = got.segments[1]
    assert door.valid_points == 4000 and (door.centroid.x, door.centroid.z) == (0.5, 3.0)
    assert (door.box_min.y, door.box_max.y) == (-1.0, 0.5)
    chair = got.segments[0]
    assert chair.valid_points == 0 and math.isnan(chair.centroid.x) and math.isnan(chair.box_max.z)
    publisher_node.destroy_node()
    subscriber_node.destroy_node()
