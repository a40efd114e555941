"""The segmenter node over real DDS: outputs, run-time vocabulary changes, bad input, load."""

from __future__ import annotations

import numpy as np
import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters, SetParametersAtomically
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_helpers import spin_until
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from tiny_model import TINY_CHECKPOINT

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.prompts import resolve_templates
from ovseg_ros.engine.resize import ProcessingSize
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

    def set_parameters_atomically(self, **values):
        client = self.node.create_client(
            SetParametersAtomically, "/ovseg_segmenter/set_parameters_atomically"
        )
        request = SetParametersAtomically.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(request)
        assert self.spin_until(future.done)
        return future.result().result

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
    assert harness.spin_until(
        lambda: harness.segmenter.cameras[0].overlay_pub.get_subscription_count() > 0
    )
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


def test_hierarchy_proposals_serve_frames_over_dds(ros_context):
    h = Harness(ros_context, proposal_generator="hierarchy")
    try:
        assert h.segmenter.segmenter.proposals.takes_tensors
        h.wait_connected()
        rgb, msg = _scene_image(1_000_004, stamp_sec=7)
        h.image_pub.publish(msg)
        assert h.spin_until(lambda: len(h.results) > 0)
        assert h.results[0].header.stamp.sec == 7
        expected = h.segmenter.segmenter.segment(rgb, h.segmenter.vocabulary)
        np.testing.assert_array_equal(_labels_of(h.results[0].labels), expected.labels)
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
    assert harness.segmenter.cameras[0].pending is None
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
        assert [w.name for w in h.segmenter._workers] == ["segmenter", "vocabulary", "stage2"]
        assert ThreadSettings.current() == pipeline_thread_settings(before)
        header = Header(frame_id="cam")
        h.image_pub.publish(Image(header=header, height=2, width=2, encoding="32FC1", step=8))
        assert h.spin_until(lambda: h.segmenter.stats.invalid == 1)
        images = {}
        for index in range(10):  # back to back: stage 1 of a frame overlaps stage 2 of another
            images[index + 1], msg = _scene_image(1_000_020 + index, stamp_sec=index + 1)
            h.image_pub.publish(msg)
            h.spin_until(lambda: False, timeout_s=0.1)

        def idle() -> bool:
            """The newest frame is published, every other one published, replaced or skipped."""
            stats = h.segmenter.stats  # a snapshot: the cameras' counters added up
            done = stats.processed + stats.replaced + stats.invalid == stats.received
            newest = bool(h.results) and h.results[-1].header.stamp.sec == 10
            return done and newest and len(h.results) == stats.processed

        # Generous: on 2 cores the two workers contend with CLIP's threads (see README).
        assert h.spin_until(idle, timeout_s=60.0)
        stats = h.segmenter.stats
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
    assert harness.spin_until(
        lambda: harness.segmenter.cameras[0].overlay_pub.get_subscription_count() > 0
    )
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


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("vocabulary", "person", 'list of names, e.g. "[\'person\', \'chair\']"'),
        ("vocabulary", [1, 2], "vocabulary must be a list of names"),
        ("prompt_templates", 3, "prompt_templates must be a list of"),
        ("overlay_alpha", "half", "overlay_alpha must be a number, e.g. 0.5"),
        ("max_rate_hz", True, "max_rate_hz must be a number"),
        ("min_segment_area", 2.5, "min_segment_area must be an integer, e.g. 16"),
        ("overlay_alpha", 2, "overlay_alpha must be between 0.0 and 1.0"),
        ("classifier", 1, "classifier must be a string"),
        ("processing_size", 2.5, "processing_size must be a string, e.g. 640; got 2.5"),
        ("processing_size", "wide", "processing_size: processing size 'wide' is not one of: N"),
        ("processing_size", "short:0", "processing_size: a short-side processing size must be"),
        ("processing_size", -1, "processing_size: processing sizes must be >= 0, got -1"),
    ],
)  # fmt: skip
def test_wrong_type_gets_the_nodes_reason_with_an_example(harness, name, value, reason):
    before = harness.segmenter.get_parameter(name).value
    outcome = harness.set_parameters(**{name: value})[0]
    assert not outcome.successful and reason in outcome.reason, outcome.reason
    assert harness.segmenter.get_parameter(name).value == before


def test_an_integer_is_taken_for_a_float_parameter(harness):
    assert harness.set_parameters(overlay_alpha=1)[0].successful
    assert harness.segmenter.params.overlay_alpha == 1.0


def test_processing_size_is_text_or_an_integer_and_takes_effect_at_run_time(harness):
    config = harness.segmenter.segmenter.config
    assert config.processing_size == ProcessingSize("long", 640)
    assert harness.set_parameters(processing_size="short:512:2048")[0].successful
    assert config.processing_size == ProcessingSize("short", 512, 2048)
    assert harness.set_parameters(processing_size=0)[0].successful  # what `:=0` gives
    assert harness.segmenter.params.processing_size == "0"
    assert config.processing_size == ProcessingSize("long", 0)


def test_setting_the_vocabulary_in_force_keeps_the_version_and_does_no_work(harness):
    calls = []
    encode = harness.segmenter.encoder.encode
    harness.segmenter.encoder.encode = lambda *a, **k: calls.append(a) or encode(*a, **k)
    same = harness.set_parameters(vocabulary=list(SHAPES), prompt_templates=["single"])
    assert all(r.successful for r in same)
    respaced = harness.set_parameters(vocabulary=[f" {n} " for n in SHAPES])  # same once tidied
    assert respaced[0].successful
    harness.spin_until(lambda: False, timeout_s=1.0)
    assert calls == [] and harness.segmenter.vocabulary.version == 1
    assert [v.version for v in harness.vocabularies] == [1]


def test_atomic_request_brings_one_version_and_plain_request_one_per_parameter(harness):
    outcome = harness.set_parameters_atomically(
        vocabulary=COLORS, prompt_templates=["a photo of a {} shape."]
    )
    assert outcome.successful
    assert harness.spin_until(lambda: harness.vocabularies[-1].version == 2)
    assert list(harness.vocabularies[-1].class_names) == COLORS
    assert list(harness.vocabularies[-1].prompt_templates) == ["a photo of a {} shape."]
    rejected = harness.set_parameters_atomically(vocabulary=SHAPES, prompt_templates=["no slot"])
    assert not rejected.successful and "{}" in rejected.reason
    assert harness.segmenter.get_parameter("vocabulary").value == COLORS
    results = harness.set_parameters(vocabulary=SHAPES, prompt_templates=["single"])
    assert all(r.successful for r in results)
    # SetParameters applies each parameter on its own: two versions (3, then 4).
    assert harness.spin_until(lambda: harness.vocabularies[-1].version == 4)
    assert list(harness.vocabularies[-1].class_names) == SHAPES
    assert tuple(harness.vocabularies[-1].prompt_templates) == resolve_templates(["single"])


def test_a_change_whose_encoding_fails_restores_the_parameters(harness):
    encode = harness.segmenter.encoder.encode

    def failing(names, *args, **kwargs):
        if "kettle" in names:
            raise RuntimeError("text tower out of memory")
        return encode(names, *args, **kwargs)

    harness.segmenter.encoder.encode = failing
    assert harness.set_parameters(vocabulary=["kettle", "cup"])[0].successful
    assert harness.spin_until(lambda: harness.segmenter.get_parameter("vocabulary").value == SHAPES)
    assert harness.segmenter.params.vocabulary == SHAPES
    assert harness.segmenter.get_parameter("prompt_templates").value == ["single"]
    assert harness.segmenter.vocabulary.version == 1
    assert harness.set_parameters(vocabulary=COLORS)[0].successful  # later changes still work
    assert harness.spin_until(lambda: harness.vocabularies[-1].version == 2)


def test_a_long_vocabulary_change_reports_progress(harness, capfd, monkeypatch):
    from ovseg_ros.ros import segmenter_node

    monkeypatch.setattr(segmenter_node, "LONG_ENCODING_PROMPTS", 100)
    monkeypatch.setattr(segmenter_node, "PROGRESS_INTERVAL_S", 0.0)
    harness.segmenter.encoder.prompts_per_batch = 16
    names = [f"thing {index}" for index in range(120)]
    assert harness.set_parameters(vocabulary=names)[0].successful
    assert harness.spin_until(lambda: harness.vocabularies[-1].version == 2)
    log = capfd.readouterr().err
    assert "encoding 120 class names x 1 templates (120 prompts); this takes a while" in log
    assert "encoding vocabulary: 16/120 names (13 %), about" in log


def test_oversized_frames_are_dropped_before_decoding_with_their_size(harness, capfd):
    assert harness.set_parameters(max_input_pixels=100_000)[0].successful
    header = Header(frame_id="cam")
    huge_raw = Image(header=header, height=1000, width=1000, encoding="rgb8", step=3000)
    harness.image_pub.publish(huge_raw)  # no pixel data at all: its size alone decides
    assert harness.spin_until(lambda: harness.segmenter.stats.invalid == 1)
    log = capfd.readouterr().err
    assert "frame 1000x1000 (1.0 MP) exceeds max_input_pixels=100000" in log
    _, good = _scene_image(1_000_030, stamp_sec=7)  # 320x240 = 76800 pixels passes
    harness.image_pub.publish(good)
    assert harness.spin_until(lambda: len(harness.results) == 1)


def test_compressed_bomb_and_mislabelled_format(ros_context, capfd):
    import cv2

    h = Harness(ros_context, input_transport="compressed", max_input_pixels=1_000_000)
    try:
        h.wait_connected(h.compressed_pub)
        header = Header(frame_id="cam")
        ok, bomb = cv2.imencode(".png", np.zeros((4000, 4000, 3), np.uint8))
        h.compressed_pub.publish(CompressedImage(header=header, format="png", data=bomb.tobytes()))
        assert h.spin_until(lambda: h.segmenter.stats.invalid == 1)
        assert (
            "frame 4000x4000 (16.0 MP) exceeds max_input_pixels=1000000" in capfd.readouterr().err
        )
        rgb, _ = _scene_image(1_000_031, stamp_sec=8)
        ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
        mislabelled = CompressedImage(header=header, format="jpeg", data=png.tobytes())
        for count in (1, 2):
            h.compressed_pub.publish(mislabelled)
            assert h.spin_until(lambda c=count: len(h.results) == c)
        expected = h.segmenter.segmenter.segment(rgb, h.segmenter.vocabulary)
        np.testing.assert_array_equal(_labels_of(h.results[-1].labels), expected.labels)
        log = capfd.readouterr().err
        assert log.count("say format 'jpeg' but hold PNG data") == 1, log
    finally:
        h.close()


def test_large_frames_are_processed_smaller_and_answered_at_full_size(harness):
    import cv2

    harness.subscribe_overlay()
    assert harness.spin_until(
        lambda: harness.segmenter.cameras[0].overlay_pub.get_subscription_count() > 0
    )
    assert harness.set_parameters(processing_size="320")[0].successful
    scene = toy_world.generate_scene(1_000_032)
    big = cv2.resize(scene.image, (1280, 960), interpolation=cv2.INTER_NEAREST)
    header = Header(frame_id="cam")
    header.stamp.sec = 11
    harness.image_pub.publish(array_to_image(big, "rgb8", header))
    assert harness.spin_until(lambda: harness.results and harness.overlays)
    labels = _labels_of(harness.results[0].labels)
    assert labels.shape == (960, 1280)
    assert (harness.overlays[0].height, harness.overlays[0].width) == (960, 1280)
    small = harness.segmenter.segmenter.segment(scene.image, harness.segmenter.vocabulary)
    upscaled = cv2.resize(small.labels, (1280, 960), interpolation=cv2.INTER_NEAREST)
    assert (labels == upscaled).mean() > 0.97  # the same answer, up to the borders
    for segment in harness.results[0].segments:
        x, y = segment.roi.x_offset, segment.roi.y_offset
        assert x + segment.roi.width <= 1280 and y + segment.roi.height <= 960
        assert (segment.mask.height, segment.mask.width) == (segment.roi.height, segment.roi.width)
