"""Several cameras served by one segmenter node (one model) over real DDS: each camera's own
topics, frames of cameras that are ready together batched into one stage 2, a broken camera
beside a good one, one vocabulary for all."""

from __future__ import annotations

import numpy as np
import pytest
from rcl_interfaces.srv import SetParameters
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import spin_until
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from test_segmenter_node import _overrides

from ovseg_ros.engine import toy_world
from ovseg_ros.msg import SegmentationResult
from ovseg_ros.ros.conversions import array_to_image
from ovseg_ros.ros.segmenter_node import SegmenterNode

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
CAMERAS = ["front:/front/image:/front/depth", "/rear:/rear/image"]


def _frame(seed: int, stamp_sec: int, frame_id: str) -> tuple[np.ndarray, Image]:
    image = toy_world.generate_scene(seed).image
    header = Header(frame_id=frame_id)
    header.stamp.sec = stamp_sec
    return image, array_to_image(image, "rgb8", header)


def _labels(msg: SegmentationResult) -> np.ndarray:
    labels = msg.labels
    return np.frombuffer(bytes(labels.data), np.uint16).reshape(labels.height, labels.width)


class TwoCameras:
    """A segmenter serving `front` and `rear`, and a client node feeding both."""

    def __init__(self, context) -> None:
        self.segmenter = SegmenterNode(
            context=context, parameter_overrides=_overrides(cameras=CAMERAS)
        )
        self.node = Node("cameras_client", context=context)
        self.results: dict[str, list[SegmentationResult]] = {"front": [], "rear": []}
        self.publishers = {}
        for name in self.results:
            self.node.create_subscription(
                SegmentationResult,
                f"/{name}/ovseg_segmenter/result",
                self.results[name].append,
                RELIABLE,
            )
            self.publishers[name] = self.node.create_publisher(Image, f"/{name}/image", RELIABLE)
        self.executor = MultiThreadedExecutor(num_threads=2, context=context)
        self.executor.add_node(self.segmenter)
        self.executor.add_node(self.node)

    def spin_until(self, done, timeout_s: float = 30.0) -> bool:
        return spin_until(self.executor, done, timeout_s)

    def close(self) -> None:
        self.executor.shutdown()
        self.segmenter.destroy_node()
        self.node.destroy_node()


@pytest.fixture
def cameras(ros_context):
    c = TwoCameras(ros_context)
    assert c.spin_until(lambda: all(p.get_subscription_count() for p in c.publishers.values()))
    yield c
    c.close()


def test_each_camera_has_its_own_topics_and_one_model(cameras):
    names = dict(cameras.node.get_topic_names_and_types())
    for camera in ("front", "rear"):
        for output in ("labels", "result", "overlay"):
            assert f"/{camera}/ovseg_segmenter/{output}" in names
    assert names["/front/ovseg_segmenter/points"] == ["sensor_msgs/msg/PointCloud2"]
    assert "/rear/ovseg_segmenter/points" not in names  # no depth on rear
    assert "/ovseg_segmenter/vocabulary" in names
    assert len(cameras.segmenter.cameras) == 2
    assert cameras.node.count_publishers("/front/ovseg_segmenter/points") == 1


def test_a_broken_camera_never_stalls_the_good_one(cameras):
    front = []
    for stamp in range(1, 4):
        cameras.publishers["rear"].publish(
            Image(header=Header(frame_id="rear"), height=2, width=2, encoding="32FC1", step=8)
        )
        image, msg = _frame(1_000_030 + stamp, stamp, "front")
        front.append(image)
        cameras.publishers["front"].publish(msg)
        assert cameras.spin_until(
            lambda s=stamp: any(r.header.stamp.sec == s for r in cameras.results["front"])
        )
    rear_stats = cameras.segmenter.cameras[1].stats
    assert rear_stats.invalid >= 1 and rear_stats.processed == 0
    assert cameras.results["rear"] == []
    result = cameras.results["front"][-1]
    assert result.header.frame_id == "front" and not result.has_depth  # no depth published
    expected = cameras.segmenter.segmenter.segment(front[-1], cameras.segmenter.vocabulary)
    np.testing.assert_array_equal(_labels(result), expected.labels)


def test_frames_ready_together_share_one_stage_two_and_one_vocabulary(cameras):
    segmenter = cameras.segmenter
    for attempt in range(5):
        # A frame in flight, then one frame per camera: both wait, and go as one batch.
        cameras.publishers["front"].publish(_frame(1_000_040, 100 + attempt, "front")[1])
        cameras.spin_until(lambda: False, timeout_s=0.05)
        images = {}
        for name, seed in (("front", 1_000_041), ("rear", 1_000_042)):
            images[name], msg = _frame(seed + attempt, 200 + attempt, name)
            cameras.publishers[name].publish(msg)
        assert cameras.spin_until(
            lambda a=attempt: all(
                any(r.header.stamp.sec == 200 + a for r in results)
                for results in cameras.results.values()
            )
        )
        if segmenter.batch_sizes[2]:
            break
    assert segmenter.batch_sizes[2] >= 1, segmenter.batch_sizes
    for name, results in cameras.results.items():
        result = next(r for r in results if r.header.stamp.sec == 200 + attempt)
        assert result.header.frame_id == name
        expected = segmenter.segmenter.segment(images[name], segmenter.vocabulary)
        np.testing.assert_array_equal(_labels(result), expected.labels)

    client = cameras.node.create_client(SetParameters, "/ovseg_segmenter/set_parameters")
    assert client.wait_for_service(timeout_sec=10.0)
    colors = toy_world.color_classes()
    request = SetParameters.Request(
        parameters=[Parameter("vocabulary", value=colors).to_parameter_msg()]
    )
    future = client.call_async(request)
    assert cameras.spin_until(future.done) and future.result().results[0].successful
    assert cameras.spin_until(lambda: segmenter.vocabulary.version == 2)
    for name in ("front", "rear"):
        cameras.publishers[name].publish(_frame(1_000_050, 300, name)[1])
    assert cameras.spin_until(
        lambda: all(
            any(r.header.stamp.sec == 300 for r in results) for results in cameras.results.values()
        )
    )
    for results in cameras.results.values():
        result = next(r for r in results if r.header.stamp.sec == 300)
        assert result.vocabulary_version == 2 and list(result.class_names) == colors


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["front"], "is not NAMESPACE:IMAGE"),
        (["front:/a:/b:/c:/d"], "is not NAMESPACE:IMAGE"),
        (["front:/a", "front:/b"], "given twice"),
        (["front:/a b"], "not a valid ROS name"),
    ],
)
def test_bad_cameras_are_refused_with_the_reason(ros_context, value, message):
    with pytest.raises(ValueError, match=message):
        SegmenterNode(context=ros_context, parameter_overrides=_overrides(cameras=value))


def test_a_frame_with_an_unreadable_stamp_is_skipped_for_its_camera_only(cameras):
    bad = Header(frame_id="rear")
    bad.stamp.sec = -1
    image, msg = _frame(1_000_070, 0, "rear")
    msg.header = bad
    cameras.publishers["rear"].publish(msg)
    assert cameras.spin_until(lambda: cameras.segmenter.cameras[1].stats.invalid == 1)
    cameras.publishers["front"].publish(_frame(1_000_071, 400, "front")[1])
    assert cameras.spin_until(
        lambda: any(r.header.stamp.sec == 400 for r in cameras.results["front"])
    )
    cameras.publishers["rear"].publish(_frame(1_000_072, 401, "rear")[1])
    assert cameras.spin_until(
        lambda: any(r.header.stamp.sec == 401 for r in cameras.results["rear"])
    )


def test_a_batch_that_fails_as_a_whole_is_segmented_frame_by_frame(cameras, monkeypatch):
    segmenter = cameras.segmenter
    segment_batch = segmenter.segmenter.segment_batch

    def fail_with_two(images, *args):
        """Batches of several frames fail (e.g. out of memory); one frame alone works."""
        if len(images) > 1:
            raise RuntimeError("out of memory for the batch")
        return segment_batch(images, *args)

    monkeypatch.setattr(segmenter.segmenter, "segment_batch", fail_with_two)
    for attempt in range(5):
        cameras.publishers["front"].publish(_frame(1_000_080, 500 + attempt, "front")[1])
        cameras.spin_until(lambda: False, timeout_s=0.05)
        for name in ("front", "rear"):
            cameras.publishers[name].publish(_frame(1_000_081, 600 + attempt, name)[1])
        assert cameras.spin_until(
            lambda a=attempt: all(
                any(r.header.stamp.sec == 600 + a for r in results)
                for results in cameras.results.values()
            )
        )
        if segmenter.batch_sizes[2]:
            break
    assert segmenter.batch_sizes[2] >= 1, segmenter.batch_sizes
    assert segmenter.stats.invalid == 0
