"""The segmenter node on simulation time over real DDS: frames of a recording answered under its
/clock, a /clock that jumps back (a looping replay), and the warnings that explain frames
dropped for their age or kept though ahead of the node's clock."""

from __future__ import annotations

import re
import time

import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from rosgraph_msgs.msg import Clock as ClockMsg
from test_segmenter_node import Harness, _scene_image

HOUR_NS = 3600 * 1_000_000_000


class SimClock:
    """A /clock source on the harness's test node: time runs at wall pace from where it was
    last set, published every 20 ms."""

    def __init__(self, harness: Harness, start_ns: int) -> None:
        self._set(start_ns)
        self.publisher = harness.node.create_publisher(
            ClockMsg, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        )
        self._timer = harness.node.create_timer(0.02, self._publish)
        self._node = harness.node

    def _set(self, ns: int) -> None:
        self._origin_ns, self._set_at_ns = ns, time.monotonic_ns()

    def now_ns(self) -> int:
        return self._origin_ns + time.monotonic_ns() - self._set_at_ns

    def jump_to(self, ns: int) -> None:
        self._set(ns)

    def _publish(self) -> None:
        self.publisher.publish(ClockMsg(clock=Time(nanoseconds=self.now_ns()).to_msg()))

    def stop(self) -> None:
        """Stops publishing (before the executor shuts down: a 50 Hz timer's callback still
        running then makes rclpy print an InvalidHandle at exit)."""
        self._node.destroy_timer(self._timer)


def _node_clock_near(harness: Harness, clock: SimClock, within_s: float = 0.5) -> bool:
    """Whether the segmenter's clock has caught up with `clock` (to within_s)."""
    now_ns = harness.segmenter.get_clock().now().nanoseconds
    return abs(now_ns - clock.now_ns()) < within_s * 1e9


def _answer(harness: Harness, stamp_ns: int, seed: int) -> bool:
    """Publishes a frame stamped stamp_ns and waits for its result (10 s at most)."""
    _, msg = _scene_image(seed, stamp_sec=0)
    msg.header.stamp = Time(nanoseconds=stamp_ns).to_msg()
    harness.image_pub.publish(msg)
    return harness.spin_until(
        lambda: any(Time.from_msg(r.header.stamp).nanoseconds == stamp_ns for r in harness.results),
        timeout_s=10.0,
    )


@pytest.fixture
def sim_harness(ros_context):
    """A node on simulation time with the default max_age_s, and a /clock an hour behind the
    wall clock (a recording made an hour ago)."""
    h = Harness(ros_context, use_sim_time=True, max_age_s=1.0, input_reliability="reliable")
    clock = SimClock(h, time.time_ns() - HOUR_NS)
    h.wait_connected()
    assert h.spin_until(lambda: clock.publisher.get_subscription_count() > 0)
    assert h.spin_until(lambda: _node_clock_near(h, clock))
    yield h, clock
    clock.stop()
    h.spin_until(lambda: False, timeout_s=0.1)
    h.close()


def test_frames_of_an_hour_ago_are_answered_under_their_clock(sim_harness):
    harness, clock = sim_harness
    assert harness.segmenter.get_parameter("use_sim_time").value is True
    stamps = []
    for index in range(5):
        stamps.append(clock.now_ns())
        assert _answer(harness, stamps[-1], 1_000_100 + index), index
    assert [Time.from_msg(r.header.stamp).nanoseconds for r in harness.results] == stamps
    assert harness.segmenter.stats.dropped_stale == 0


def test_a_clock_that_jumps_back_keeps_frames_answered_and_is_said_once(sim_harness, capfd):
    harness, clock = sim_harness
    start_ns = clock.now_ns()
    clock.jump_to(start_ns + 10 * 1_000_000_000)  # the recording plays on to its end ...
    assert harness.spin_until(lambda: _node_clock_near(harness, clock))
    end_ns = clock.now_ns()
    assert _answer(harness, end_ns, 1_000_110)
    for loop in range(2):  # ... and starts over, twice
        clock.jump_to(start_ns)
        assert harness.spin_until(lambda: _node_clock_near(harness, clock))
        # A frame from the end of the last loop, now 10 s ahead of the clock: answered.
        assert _answer(harness, end_ns + 1_000_000 * (loop + 1), 1_000_111 + loop)
        for index in range(2):
            assert _answer(harness, clock.now_ns(), 1_000_120 + 2 * loop + index)
    assert harness.segmenter.stats.dropped_stale == 0
    log = capfd.readouterr().err
    jumps = re.findall(
        r"the clock jumped back (\d+\.\d) s \(a looping replay\?\); frames keep being answered",
        log,
    )
    assert len(jumps) == 1, log
    assert 9.5 < float(jumps[0]) < 15.0
    ahead = re.findall(
        r"frames are (\d+\.\d) s ahead of this node's clock \(max_age_s=1\): use_sim_time is true "
        r"and /clock is behind the frames \(a replay that loops\?\); they are answered, not "
        r"dropped",
        log,
    )
    assert len(ahead) == 1, log
    assert 8.0 < float(ahead[0]) < 11.0


def test_frames_older_than_the_clock_name_its_source(sim_harness, capfd):
    harness, clock = sim_harness
    _, msg = _scene_image(1_000_130, stamp_sec=0)
    msg.header.stamp = Time(nanoseconds=clock.now_ns() - HOUR_NS).to_msg()
    harness.image_pub.publish(msg)
    assert harness.spin_until(lambda: harness.segmenter.stats.dropped_stale == 1)
    expected = re.compile(
        r"dropped frames 3600\.\d s older than this node's clock \(max_age_s=1\): use_sim_time "
        r"is true: does /clock come from the same recording as the frames\? \(1 dropped so far\)"
    )
    log = []  # the warning follows the count, on the node's thread: wait for it as well
    assert harness.spin_until(
        lambda: log.append(capfd.readouterr().err) or expected.search("".join(log)), 10.0
    ), "".join(log)


@pytest.fixture
def wall_harness(ros_context):
    """A node on the system clock with the default max_age_s."""
    h = Harness(ros_context, max_age_s=1.0, input_reliability="reliable")
    h.wait_connected()
    yield h
    h.close()


def test_frames_of_an_hour_ago_without_sim_time_are_dropped_saying_why(wall_harness, capfd):
    harness = wall_harness
    for count in (1, 2):
        _, msg = _scene_image(1_000_140, stamp_sec=0)
        msg.header.stamp = Time(nanoseconds=time.time_ns() - HOUR_NS).to_msg()
        harness.image_pub.publish(msg)
        assert harness.spin_until(lambda c=count: harness.segmenter.stats.dropped_stale == c)
    assert harness.results == []
    log = capfd.readouterr().err
    warnings = re.findall(
        r"dropped frames (\d+\.\d) s older than this node's clock \(max_age_s=1\): replaying a "
        r"recording\? set use_sim_time:=true with a /clock source, or max_age_s:=0 \(1 dropped so "
        r"far\)",
        log,
    )
    assert len(warnings) == 1, log  # throttled: the second drop is counted, not said
    assert 3600.0 <= float(warnings[0]) < 3610.0


def test_frames_a_little_late_or_ahead_get_their_own_hint(wall_harness, capfd):
    harness = wall_harness
    _, msg = _scene_image(1_000_150, stamp_sec=0)
    msg.header.stamp = Time(nanoseconds=time.time_ns() - 5 * 1_000_000_000).to_msg()
    harness.image_pub.publish(msg)
    assert harness.spin_until(lambda: harness.segmenter.stats.dropped_stale == 1)
    for index in range(2):  # a camera whose clock runs a minute ahead: answered, said once
        ahead_ns = time.time_ns() + 60 * 1_000_000_000
        assert _answer(harness, ahead_ns, 1_000_151 + index)
    log = capfd.readouterr().err
    assert re.search(
        r"dropped frames 5\.\d s older than this node's clock \(max_age_s=1\): segmenting takes "
        r"longer than that, or the camera's clock is behind this machine's; raise max_age_s "
        r"\(0: never drop\)",
        log,
    )
    ahead = "s ahead of this node's clock (max_age_s=1): the camera's clock runs ahead of this "
    assert log.count(ahead) == 1, log


def test_use_sim_time_can_be_switched_on_at_run_time(wall_harness):
    harness = wall_harness
    assert harness.set_parameters(use_sim_time=True)[0].successful
    assert harness.segmenter.get_clock().ros_time_is_active
    assert harness.segmenter.get_parameter("use_sim_time").value is True
