"""The segmenter node over real DDS: outputs, run-time vocabulary changes, bad input, load."""

from __future__ import annotations

import numpy as np
import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_helpers import spin_until
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from tiny_model import TINY_CHECKPOINT

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.segmentation import UNLABELED
from ovseg_ros.engine.segmenter import ThreadSettings, pipeline_thread_settings
from ovseg_ros.msg import SegmentationResult, Vocabulary
from ovseg_ros.ros.conversions import array_to_image
from ovseg_ros.ros.segmenter_node import SegmenterNode

SHAPES = toy_world.shape_classes()
COLORS = toy_world.color_classes()
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def _overrides(**values) -> list[Parameter]:
    settings = {
        "model": "ovseg-tiny-clip",
        "pretrained": "",
        "checkpoint": str(TINY_CHECKPOINT),
        "device": "cpu",
        "vocabulary": SHAPES,
        "prompt_templates": ["single"],
        "max_age_s": 0.0,
        **values,
    }
    return [Parameter(name, value=value) for name, value in settings.items()]


class Harness:
    """A segmenter node plus a test node that feeds it and records what it publishes."""

    def __init__(self, context, **parameters) -> None:
        self.segmenter = SegmenterNode(
            context=context, parameter_overrides=_overrides(**parameters)
        )
        self.node = Node("test_client", context=context)
        self.results: list[SegmentationResult] = []
        self.labels: list[Image] = []
        self.overlays: list[Image] = []
        self.vocabularies: list[Vocabulary] = []
        sub = self.node.create_subscription
        sub(SegmentationResult, "/ovseg_segmenter/result", self.results.append, RELIABLE)
        sub(Image, "/ovseg_segmenter/labels", self.labels.append, RELIABLE)
        sub(Vocabulary, "/ovseg_segmenter/vocabulary", self.vocabularies.append, LATCHED)
        self.image_pub = self.node.create_publisher(Image, "/image", RELIABLE)
        self.compressed_pub = self.node.create_publisher(
            CompressedImage, "/image/compressed", RELIABLE
        )
        self.set_client = self.node.create_client(SetParameters, "/ovseg_segmenter/set_parameters")
        self.executor = MultiThreadedExecutor(num_threads=2, context=context)
        self.executor.add_node(self.segmenter)
        self.executor.add_node(self.node)

    def subscribe_overlay(self) -> None:
        self.node.create_subscription(
            Image, "/ovseg_segmenter/overlay", self.overlays.append, RELIABLE
        )

    def spin_until(self, done, timeout_s: float = 30.0) -> bool:
        return spin_until(self.executor, done, timeout_s)

    def wait_quiet(self, quiet_s: float = 2.0) -> None:
        """Spins until no result has arrived for quiet_s seconds."""
        while True:
            count = len(self.results)
            self.spin_until(lambda: False, timeout_s=quiet_s)
            if len(self.results) == count:
                return

    def wait_connected(self, publisher=None) -> None:
        publisher = publisher or self.image_pub
        assert self.spin_until(lambda: publisher.get_subscription_count() > 0)
        assert self.spin_until(lambda: len(self.vocabularies) > 0)

    def set_parameters(self, **values) -> list:
        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        assert self.set_client.wait_for_service(timeout_sec=10.0)
        future = self.set_client.call_async(request)
        assert self.spin_until(future.done)
        return future.result().results

    def close(self) -> None:
        self.executor.shutdown()
        self.segmenter.destroy_node()
        self.node.destroy_node()


@pytest.fixture
def harness(ros_context):
    h = Harness(ros_context)
    h.wait_connected()
    yield h
    h.close()


def _scene_image(seed: int, stamp_sec: int, frame_id: str = "cam") -> tuple[np.ndarray, Image]:
    scene = toy_world.generate_scene(seed)
    header = Header(frame_id=frame_id)
    header.stamp.sec = stamp_sec
    return scene.image, array_to_image(scene.image, "rgb8", header)


def _labels_of(msg: Image) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), np.uint16).reshape(msg.height, msg.width)


def test_image_yields_labels_result_overlay_with_its_header(harness):
    harness.subscribe_overlay()
    assert harness.spin_until(lambda: harness.segmenter.overlay_pub.get_subscription_count() > 0)
    rgb, msg = _scene_image(1_000_001, stamp_sec=42, frame_id="camera_optical")
    harness.image_pub.publish(msg)
    assert harness.spin_until(lambda: harness.results and harness.labels and harness.overlays)
    for out in (harness.results[0], harness.labels[0], harness.overlays[0]):
        assert out.header.stamp.sec == 42 and out.header.frame_id == "camera_optical"
    expected = harness.segmenter.segmenter.segment(rgb, harness.segmenter.vocabulary)
    np.testing.assert_array_equal(_labels_of(harness.labels[0]), expected.labels)
    np.testing.assert_array_equal(_labels_of(harness.results[0].labels), expected.labels)
    result = harness.results[0]
    assert result.class_names == SHAPES and result.vocabulary_version == 1
    assert sum(s.area for s in result.segments) <= rgb.shape[0] * rgb.shape[1]
    overlay = harness.overlays[0]
    assert (overlay.encoding, overlay.height, overlay.width) == ("rgb8", 240, 320)


def test_vocabulary_change_through_set_parameters_service(harness):
    _, msg = _scene_image(1_000_002, stamp_sec=1)
    results = harness.set_parameters(vocabulary=COLORS)
    assert results[0].successful
    assert harness.spin_until(lambda: harness.vocabularies[-1].version == 2)
    assert list(harness.vocabularies[-1].class_names) == COLORS
    assert len(harness.vocabularies[-1].colors) == len(COLORS)
    harness.image_pub.publish(msg)
    assert harness.spin_until(lambda: len(harness.results) > 0)
    assert harness.results[-1].vocabulary_version == 2
    assert list(harness.results[-1].class_names) == COLORS


@pytest.mark.parametrize(
    ("vocabulary", "reason"),
    [([], "empty"), (["chair", "Chair "], "duplicate"), (["ok", ""], "empty")],
)
def test_invalid_vocabulary_is_rejected_with_reason(harness, vocabulary, reason):
    request_value = ParameterValue(
        type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=vocabulary
    )
    request = SetParameters.Request(
        parameters=[ParameterMsg(name="vocabulary", value=request_value)]
    )
    assert harness.set_client.wait_for_service(timeout_sec=10.0)
    future = harness.set_client.call_async(request)
    assert harness.spin_until(future.done)
    outcome = future.result().results[0]
    assert not outcome.successful and reason in outcome.reason.lower()
    assert harness.segmenter.get_parameter("vocabulary").value == SHAPES
    assert harness.segmenter.vocabulary.version == 1
    assert harness.segmenter.vocabulary.class_names == SHAPES


def test_vocabulary_changes_while_streaming_stay_consistent(harness):
    names_by_version = {1: SHAPES}
    vocabularies = [COLORS, SHAPES, COLORS[:4], SHAPES[:3]]
    for index in range(12):
        if index % 3 == 0 and vocabularies:
            vocabulary = vocabularies.pop(0)
            assert harness.set_parameters(vocabulary=vocabulary)[0].successful
        _, msg = _scene_image(1_000_010 + index, stamp_sec=index + 1)
        harness.image_pub.publish(msg)
        count = len(harness.results)
        harness.spin_until(lambda c=count: len(harness.results) > c, timeout_s=10.0)
    assert harness.spin_until(lambda: harness.vocabularies[-1].version == 5)
    for vocabulary in harness.vocabularies:
        names_by_version[vocabulary.version] = list(vocabulary.class_names)
    assert len(harness.results) >= 6
    assert len({r.vocabulary_version for r in harness.results}) >= 2
    for result in harness.results:
        assert list(result.class_names) == names_by_version[result.vocabulary_version]
        labels = _labels_of(result.labels)
        used = set(np.unique(labels).tolist()) - {UNLABELED}
        assert max(used, default=0) < len(result.class_names)
        assert all(s.class_name == result.class_names[s.class_id] for s in result.segments)


def test_compressed_input(ros_context):
    import cv2

    h = Harness(ros_context, input_transport="compressed")
    try:
        h.wait_connected(h.compressed_pub)
        rgb, _ = _scene_image(1_000_003, stamp_sec=5)
        ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
        header = Header(frame_id="cam")
        header.stamp.sec = 5
        h.compressed_pub.publish(CompressedImage(header=header, format="png", data=png.tobytes()))
        assert h.spin_until(lambda: len(h.results) > 0)
        expected = h.segmenter.segmenter.segment(rgb, h.segmenter.vocabulary)
        np.testing.assert_array_equal(_labels_of(h.results[0].labels), expected.labels)
        h.compressed_pub.publish(
            CompressedImage(header=header, format="jpeg", data=b"\xff\xd8junk")
        )
        h.spin_until(lambda: h.segmenter.stats.invalid > 0, timeout_s=10.0)
        assert h.segmenter.stats.invalid == 1
    finally:
        h.close()


def test_bad_frames_are_skipped_and_node_keeps_serving(harness):
    header = Header(frame_id="cam")
    unsupported = Image(header=header, height=2, width=2, encoding="32FC1", step=8, data=bytes(16))
    truncated = Image(
        header=header, height=240, width=320, encoding="rgb8", step=960, data=bytes(100)
    )
    for bad in (unsupported, truncated):
        count = harness.segmenter.stats.invalid
        harness.image_pub.publish(bad)
        assert harness.spin_until(lambda c=count: harness.segmenter.stats.invalid > c)
    assert harness.segmenter.stats.invalid == 2
    _, good = _scene_image(1_000_004, stamp_sec=9)
    harness.image_pub.publish(good)
    assert harness.spin_until(lambda: len(harness.results) > 0)
    assert harness.results[0].header.stamp.sec == 9


def _rss_mib() -> float:
    """Resident memory of this process in MiB (Linux)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.fixture
def reliable_harness(ros_context):
    """A harness whose node takes its input reliably: the newest frame of a burst always
    arrives (best effort may lose it in transport, which is not what these tests check)."""
    h = Harness(ros_context, input_reliability="reliable")
    h.wait_connected()
    yield h
    h.close()


def test_burst_of_100_frames_leaves_no_backlog(reliable_harness):
    harness = reliable_harness
    _, msg = _scene_image(1_000_005, stamp_sec=1)
    harness.image_pub.publish(msg)  # warm-up frame, before memory is measured
    assert harness.spin_until(lambda: len(harness.results) == 1)
    rss_before = _rss_mib()
    for index in range(100):
        msg.header.stamp.sec = index + 2
        harness.image_pub.publish(msg)
    harness.wait_quiet()
    stats = harness.segmenter.stats
    assert harness.segmenter._pending is None
    # Each frame that reached the node was processed or replaced by a newer one: no queue.
    assert stats.processed + stats.replaced == stats.received
    assert stats.processed < 60 and len(harness.results) == stats.processed
    assert harness.results[-1].header.stamp.sec == 101  # the newest frame is never lost
    assert _rss_mib() - rss_before < 100


def test_pipelined_node_pairs_each_result_with_its_own_frame(ros_context):
    before = ThreadSettings.current()
    h = Harness(ros_context, pipeline=True, input_reliability="reliable")
    try:
        h.wait_connected()
        assert [w.name for w in h.segmenter._workers] == ["segmenter", "stage2"]
        assert ThreadSettings.current() == pipeline_thread_settings(before)
        header = Header(frame_id="cam")
        h.image_pub.publish(Image(header=header, height=2, width=2, encoding="32FC1", step=8))
        assert h.spin_until(lambda: h.segmenter.stats.invalid == 1)
        images = {}
        for index in range(10):  # back to back: stage 1 of a frame overlaps stage 2 of another
            images[index + 1], msg = _scene_image(1_000_020 + index, stamp_sec=index + 1)
            h.image_pub.publish(msg)
            h.spin_until(lambda: False, timeout_s=0.1)
        stats = h.segmenter.stats

        def idle() -> bool:
            """The newest frame is published, every other one published, replaced or skipped."""
            done = stats.processed + stats.replaced + stats.invalid == stats.received
            newest = bool(h.results) and h.results[-1].header.stamp.sec == 10
            return done and newest and len(h.results) == stats.processed

        # Generous: on 2 cores the two workers contend with CLIP's threads (see README).
        assert h.spin_until(idle, timeout_s=60.0)
        assert stats.invalid == 1 and stats.processed >= 2
        vocabulary = h.segmenter.vocabulary
        for result in h.results:
            expected = h.segmenter.segmenter.segment(images[result.header.stamp.sec], vocabulary)
            np.testing.assert_array_equal(_labels_of(result.labels), expected.labels)
    finally:
        h.close()
    assert ThreadSettings.current() == before  # given back when the node is destroyed


def test_overlay_not_rendered_without_subscriber(harness):
    _, msg = _scene_image(1_000_006, stamp_sec=3)
    harness.image_pub.publish(msg)
    assert harness.spin_until(lambda: len(harness.results) > 0)
    assert harness.segmenter.stats.overlays == 0
    harness.subscribe_overlay()
    assert harness.spin_until(lambda: harness.segmenter.overlay_pub.get_subscription_count() > 0)
    harness.image_pub.publish(msg)
    assert harness.spin_until(lambda: len(harness.overlays) > 0)
    assert harness.segmenter.stats.overlays == 1


def test_stale_frames_are_dropped_and_counted(ros_context):
    h = Harness(ros_context, max_age_s=5.0)  # the first frame is decades old, the second fresh
    try:
        h.wait_connected()
        _, msg = _scene_image(1_000_007, stamp_sec=1)
        h.image_pub.publish(msg)
        assert h.spin_until(lambda: h.segmenter.stats.dropped_stale == 1)
        msg.header.stamp = h.node.get_clock().now().to_msg()
        h.image_pub.publish(msg)
        assert h.spin_until(lambda: len(h.results) == 1)
        assert h.segmenter.stats.dropped_stale == 1
    finally:
        h.close()


def test_classifier_switch_at_run_time_is_validated(harness):
    rejected = harness.set_parameters(classifier="fastest")[0]
    assert not rejected.successful and "crop" in rejected.reason
    assert harness.segmenter.segmenter.config.classifier == "crop"
    assert harness.set_parameters(classifier="dense")[0].successful
    assert harness.segmenter.segmenter.config.classifier == "dense"
    _, msg = _scene_image(1_000_008, stamp_sec=4)
    harness.image_pub.publish(msg)
    assert harness.spin_until(lambda: len(harness.results) > 0)
    assert harness.results[0].class_names == SHAPES
