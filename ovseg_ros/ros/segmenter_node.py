"""The `ovseg_segmenter` node: camera images (and depth) in, labels, results, overlays and
labelled point clouds out, for one camera or several served by one model.

Wiring only: messages are converted here and the engine does the work. Frames are processed on a
worker thread so the executor never waits on inference; only the newest frame of each camera is
kept (camera.py). The frames of the cameras that are ready at the same time form one batch:
stage 1 runs per frame, stage 2's CLIP forwards once for the batch (segment_batch). With
`pipeline`, a second worker runs stage 2 while the first decodes the next batch and proposes its
masks; one prepared batch at most waits between them. Vocabulary changes are validated in the
set-parameters callback and encoded on a second thread, then swapped in as one object, so every
result carries the class names and version it was computed with. Frame ages (max_age_s) are
measured on the node's clock, /clock with use_sim_time; the rate limit and the check for silent
cameras (input_timeout_s) use the steady clock, so a /clock that stops or jumps back stalls
nothing.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType, JumpHandle, JumpThreshold, TimeJump
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ovseg_ros.cameras import CameraTopics, parse_cameras
from ovseg_ros.engine.geometry import add_segment_geometry, labelled_points
from ovseg_ros.engine.paper import check_checkpoint, paper_setting
from ovseg_ros.engine.proposals import Proposals
from ovseg_ros.engine.render import class_colors, render_overlay
from ovseg_ros.engine.segmentation import Segmentation
from ovseg_ros.engine.segmenter import ThreadSettings, build_segmenter, enter_pipeline_threads
from ovseg_ros.engine.vocabulary import EncodedVocabulary, VocabularyEncoder, validate_class_names
from ovseg_ros.msg import Vocabulary
from ovseg_ros.ros.camera import CameraStream, FrameStats
from ovseg_ros.ros.conversions import (
    ImageConversionError,
    array_to_image,
    compressed_to_rgb,
    format_mismatch,
    image_to_rgb,
    points_to_cloud,
    segmentation_to_msg,
    vocabulary_to_msg,
)
from ovseg_ros.ros.parameters import (
    DESCRIPTIONS,
    SegmenterParameters,
    check_value,
    declare_parameters,
    paper_build_settings,
    paper_values,
)
from ovseg_ros.ros.runner import exit_now, run_node


@dataclass
class PreparedFrame:
    """A frame ready for stage 2: its camera, the message, its (H, W, 3) uint8 RGB pixels, its
    stage-1 proposals (None: stage 2 runs stage 1 itself) and the milliseconds spent so far per
    stage."""

    camera: CameraStream
    msg: Image | CompressedImage
    rgb: np.ndarray
    proposals: Proposals | None
    timings_ms: dict[str, float]


@dataclass
class PreparedBatch:
    """The frames of the cameras that were ready together, and the vocabulary in force when
    they were taken."""

    frames: list[PreparedFrame]
    vocabulary: EncodedVocabulary


@dataclass(frozen=True)
class VocabularyRequest:
    """An accepted vocabulary: validated class names and resolved templates (what equality
    compares), and the parameter values that asked for them (restored when a later change
    cannot be encoded)."""

    names: list[str]
    templates: tuple[str, ...]
    parameters: dict[str, list[str]] = field(compare=False)

    @classmethod
    def from_parameters(
        cls, vocabulary: list[str], prompt_templates: list[str], encoder: VocabularyEncoder
    ) -> VocabularyRequest:
        """Raises ValueError for an invalid vocabulary or template, or learned prompts the
        encoder does not have (the reason says which)."""
        return cls(
            validate_class_names(vocabulary, encoder.max_classes),
            encoder.resolve_templates(prompt_templates),
            {"vocabulary": list(vocabulary), "prompt_templates": list(prompt_templates)},
        )


class NodeStoppedError(Exception):
    """Raised inside a vocabulary encoding to end it when the node stops."""


LONG_ENCODING_PROMPTS = 5000
"""Vocabulary changes of this many new prompts or more (class names x templates) are announced
in the log, with progress every PROGRESS_INTERVAL_S (ViT-B/16's text tower on a 2-core CPU
encodes about 100 prompts a second: 1000 classes x 80 templates take about 13 minutes)."""

PROGRESS_INTERVAL_S = 5.0

INPUT_CHECK_PERIOD_S = 0.2
"""How often (seconds, steady clock) the cameras are checked against input_timeout_s."""

CLOCK_JUMP_S = 1.0
"""The node's clock going back by more than this (seconds) is said (once): a /clock source that
loops or restarts, not two /clock messages out of order."""

RECORDING_AGE_S = 60.0
"""Frames dropped for being older than this (seconds) against the node's clock are taken for a
recording replayed without simulation time, and the warning says what to set."""


class SegmenterNode(Node):
    """Open-vocabulary segmentation of a camera stream (see README.md for topics and parameters)."""

    def __init__(self, **node_kwargs) -> None:
        # State that stop() and destroy_node() rely on comes first: a node whose start fails
        # (missing weights, a bad parameter) is still destroyed by rclpy's shutdown.
        self.cameras: list[CameraStream] = []
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        """How many batches of each size stage 2 has run (frames of several cameras at once)."""
        self._frame_lock = threading.Condition()
        self._running = True
        self._workers: list[threading.Thread] = []
        self._threads_before: ThreadSettings | None = None
        self._vocabulary_requests: queue.Queue[VocabularyRequest] = queue.Queue()
        self._parameters_lock = threading.RLock()
        self._warned_formats: set[str] = set()
        self._jump_handle: JumpHandle | None = None
        self._jumped_back = False
        super().__init__("ovseg_segmenter", **node_kwargs)
        self.params: SegmenterParameters = declare_parameters(self)
        p = self.params

        start = time.monotonic()
        paper = paper_build_settings(p)
        if paper:
            fixed = paper_values(p.paper_setting)
            in_force = ", ".join(f"{name} {getattr(p, name)}" for name in fixed)
            self.get_logger().info(f"paper setting {p.paper_setting}: {in_force}")
        self.segmenter = build_segmenter(
            model=p.model,
            pretrained=p.pretrained or None,
            checkpoint=p.checkpoint or None,
            device=p.device,
            precision=p.precision,
            compile_image_tower=p.compile_image_tower,
            proposal_generator=p.proposal_generator,
            max_proposals=p.max_proposals,
            proposal_checkpoint=p.proposal_checkpoint or None,
            proposal_model=p.proposal_model or None,
            **paper,
        )
        if paper:
            check_checkpoint(paper_setting(p.paper_setting), self.segmenter)
        self._apply_segmenter_settings(p)
        self.encoder = VocabularyEncoder(
            self.segmenter.clip, max_classes=p.max_classes, learned=self.segmenter.learned_text
        )
        request = VocabularyRequest.from_parameters(p.vocabulary, p.prompt_templates, self.encoder)
        self.vocabulary: EncodedVocabulary = self.encoder.encode(
            request.names, request.templates, self._progress_logger(request)
        )
        self._requested = self._in_force = request
        self.get_logger().info(
            f"loaded {self.segmenter.clip.source} on {self.segmenter.clip.device} and "
            f"{len(self.vocabulary.class_names)} classes in {time.monotonic() - start:.1f} s"
        )

        latched = QoSProfile(
            depth=1,
            history=HistoryPolicy.KEEP_LAST,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
            reliability=ReliabilityPolicy.RELIABLE,
        )
        self.vocabulary_pub = self.create_publisher(Vocabulary, "~/vocabulary", latched)
        self._publish_vocabulary(self.vocabulary)
        self.cameras = self._make_cameras(p)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Steady, not the node's clock: that one may be /clock, which stops or jumps.
        self.create_timer(
            INPUT_CHECK_PERIOD_S, self._check_inputs, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )
        backward = JumpThreshold(
            min_forward=None, min_backward=Duration(seconds=-CLOCK_JUMP_S), on_clock_change=False
        )
        self._jump_handle = self.get_clock().create_jump_callback(
            backward, post_callback=self._on_clock_jump
        )

        self._prepared: queue.Queue[PreparedBatch] | None = None
        self._workers = [
            threading.Thread(target=self._process_frames, name="segmenter"),
            threading.Thread(
                target=self._serve,
                args=(self._vocabulary_requests, self._swap_vocabulary),
                name="vocabulary",
            ),
        ]
        if p.pipeline:
            self._prepared = queue.Queue(maxsize=1)
            self._workers.append(
                threading.Thread(
                    target=self._serve, args=(self._prepared, self._finish), name="stage2"
                )
            )
            self._threads_before = enter_pipeline_threads()
            settings = ThreadSettings.current()
            self.get_logger().info(
                f"pipeline on: torch CPU threads {self._threads_before.torch_threads} -> "
                f"{settings.torch_threads}, thread switch interval "
                f"{settings.switch_interval_s * 1e3:g} ms"
            )
        for worker in self._workers:
            worker.daemon = True
            worker.start()

    def _make_cameras(self, p: SegmenterParameters) -> list[CameraStream]:
        """The cameras of the `cameras` parameter, each publishing under NAMESPACE/<node name>;
        without it, the node's own camera: `image` (and `depth`, `camera_info` with use_depth)
        in, `~/...` out."""
        input_qos = QoSProfile(
            depth=p.input_depth,
            history=HistoryPolicy.KEEP_LAST,
            durability=qos_profile_sensor_data.durability,
            reliability=ReliabilityPolicy.RELIABLE
            if p.input_reliability == "reliable"
            else ReliabilityPolicy.BEST_EFFORT,
        )
        compressed = p.input_transport == "compressed"
        settings = (input_qos, compressed, self._frame_lock, lambda: self.params.depth_tolerance_s)
        if not p.cameras:
            depth = ("depth", "camera_info") if p.use_depth else ("", "")
            topics = CameraTopics("", "image", *depth)
            return [CameraStream(self, topics, "~", "", *settings)]
        if p.use_depth:
            self.get_logger().warning(
                "use_depth applies to the node's own camera only and is ignored with `cameras`: "
                "give each camera's depth topic in its item (NAMESPACE:IMAGE:DEPTH)"
            )
        try:
            cameras = parse_cameras(p.cameras, self.get_namespace())
        except ValueError as exc:
            raise ValueError(f"parameter cameras: {exc}") from exc
        return [
            CameraStream(
                self, topics, f"{topics.namespace}/{self.get_name()}", topics.namespace, *settings
            )
            for topics in cameras
        ]

    @property
    def stats(self) -> FrameStats:
        """The counters of every camera added up."""
        return sum((camera.stats for camera in self.cameras), FrameStats())

    def _frame_age_s(self, header: Header) -> float:
        """Seconds from the frame's stamp to this node's clock (negative: a stamp ahead of the
        clock); 0 for a zero stamp, and under use_sim_time before the first /clock."""
        clock = self.get_clock()
        stamp = Time.from_msg(header.stamp, clock_type=clock.clock_type)
        now = clock.now()
        if stamp.nanoseconds == 0 or now.nanoseconds == 0:
            return 0.0
        return (now - stamp).nanoseconds * 1e-9

    def _on_clock_jump(self, jump: TimeJump) -> None:
        """Says the first time the node's clock jumps back (a /clock source that loops or
        restarts); frame ages are measured against the new time at once."""
        if self._jumped_back:
            return
        self._jumped_back = True
        self.get_logger().info(
            f"the clock jumped back {-jump.delta.nanoseconds * 1e-9:.1f} s (a looping replay?); "
            "frames keep being answered (said once)"
        )

    def _check_inputs(self) -> None:
        """Timer: says which cameras have stopped sending frames (input_timeout_s)."""
        for camera in self.cameras:
            camera.check_input(self.params.input_timeout_s)

    # --- processing -------------------------------------------------------------------------
    def _next_batch(self) -> list[tuple[CameraStream, Image | CompressedImage]] | None:
        """Waits for frames and takes the newest of every camera whose max_rate_hz allows one
        now; None once the node stops."""
        with self._frame_lock:
            while self._running:
                now = time.monotonic()
                rate = self.params.max_rate_hz
                waiting = [c for c in self.cameras if c.pending is not None]
                ready = [c for c in waiting if c.ready_at(rate) <= now]
                if ready:
                    return [(camera, camera.take()) for camera in ready]
                soonest = min((c.ready_at(rate) for c in waiting), default=now + 0.5)
                self._frame_lock.wait(timeout=min(max(soonest - now, 0.0), 0.5))
            return None

    def _process_frames(self) -> None:
        """First worker: takes a batch (_next_batch), drops stale frames, decodes the rest, then
        segments them (or, with `pipeline`, runs stage 1 and hands them to the second
        worker)."""
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            vocabulary = self.vocabulary
            frames = []
            for camera, msg in taken:
                # None: a stamp that cannot be read (counted and logged as a skipped frame).
                if self._skip_on_error(camera, self._is_stale, camera, msg) is not False:
                    continue
                frame = self._skip_on_error(camera, self._prepare, camera, msg, vocabulary)
                if frame is not None:
                    frames.append(frame)
            if not frames:
                continue
            batch = PreparedBatch(frames, vocabulary)
            if self._prepared is None:
                self._outlive_errors(self._finish, batch)
            else:
                self._hand_over(batch)

    def _is_stale(self, camera: CameraStream, msg: Image | CompressedImage) -> bool:
        """Counts and logs (at most every 5 s per camera, with the age and what to do) a frame
        older than max_age_s; a frame ahead of the node's clock by more than max_age_s is kept,
        and said once per camera. Raises ImageConversionError for a stamp before 1970
        (negative seconds), which no clock can be compared with."""
        stamp = msg.header.stamp
        if stamp.sec < 0:
            raise ImageConversionError(f"the frame's stamp is negative ({stamp.sec} s)")
        max_age = self.params.max_age_s
        if max_age <= 0:
            return False
        age = self._frame_age_s(msg.header)
        if age < -max_age and not camera.noted_ahead:
            camera.noted_ahead = True
            camera.logger.warning(
                f"frames are {-age:.1f} s ahead of this node's clock (max_age_s={max_age:g}): "
                f"{self._ahead_hint()}; they are answered, not dropped (said once)"
            )
        if age <= max_age:
            return False
        with self._frame_lock:
            camera.stats.dropped_stale += 1
        camera.logger.warning(
            f"dropped frames {age:.1f} s older than this node's clock (max_age_s={max_age:g}): "
            f"{self._stale_hint(age)} ({camera.stats.dropped_stale} dropped so far)",
            throttle_duration_sec=5.0,
        )
        return True

    def _stale_hint(self, age_s: float) -> str:
        """What to check when frames are `age_s` seconds older than the node's clock."""
        if self.get_clock().ros_time_is_active:
            return "use_sim_time is true: does /clock come from the same recording as the frames?"
        if age_s > RECORDING_AGE_S:
            return (
                "replaying a recording? set use_sim_time:=true with a /clock source, or "
                "max_age_s:=0"
            )
        return (
            "segmenting takes longer than that, or the camera's clock is behind this machine's; "
            "raise max_age_s (0: never drop)"
        )

    def _ahead_hint(self) -> str:
        """What to check when frames are ahead of the node's clock."""
        if self.get_clock().ros_time_is_active:
            return "use_sim_time is true and /clock is behind the frames (a replay that loops?)"
        return "the camera's clock runs ahead of this machine's (synchronise them)"

    def _serve(self, items: queue.Queue, handle: Callable[[Any], object]) -> None:
        """A worker that hands each item of `items` to `handle`, in order, until the node
        stops: the vocabulary worker (accepted changes to _swap_vocabulary) and, with
        `pipeline`, the second frame worker (prepared batches to stage 2 and publishing)."""
        while self._running:
            try:
                item = items.get(timeout=0.5)
            except queue.Empty:
                continue
            self._outlive_errors(handle, item)

    def _outlive_errors(self, handle: Callable[[Any], object], item: object) -> None:
        """handle(item); an error it lets through (none is expected: each step catches its own)
        is logged, and the worker goes on with the next item."""
        try:
            handle(item)
        except Exception as exc:  # noqa: BLE001 - a worker must outlive any one item
            if self._running and self.context.ok():
                self.get_logger().error(f"{threading.current_thread().name} worker: {exc!r}")

    def _hand_over(self, batch: PreparedBatch) -> None:
        """Waits until the second worker has room for `batch` (or the node stops)."""
        while self._running:
            try:
                self._prepared.put(batch, timeout=0.5)
                return
            except queue.Full:
                continue

    def _skip_on_error(self, camera: CameraStream, step: Callable[..., Any], *args: Any) -> Any:
        """step(*args), or None after counting and logging why the camera's frame is skipped.
        Once the node stops, a step that fails because the node's publishers are gone ends
        quietly."""
        try:
            return step(*args)
        except ImageConversionError as exc:
            camera.logger.warning(f"skipped a frame: {exc}", throttle_duration_sec=2.0)
        except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the node
            if not self._running or not self.context.ok():
                return None
            camera.logger.error(f"segmentation failed, frame skipped: {exc!r}")
        with self._frame_lock:
            camera.stats.invalid += 1
        return None

    def _prepare(
        self, camera: CameraStream, msg: Image | CompressedImage, vocabulary: EncodedVocabulary
    ) -> PreparedFrame:
        """Decodes the frame; with `pipeline` also runs stage 1."""
        started = time.perf_counter()
        max_pixels = self.params.max_input_pixels
        if isinstance(msg, CompressedImage):
            self._note_format_mismatch(msg)
            rgb = compressed_to_rgb(msg, max_pixels)
        else:
            rgb = image_to_rgb(msg, max_pixels)
        timings = {"decode": (time.perf_counter() - started) * 1e3}
        proposals = None
        if self._prepared is not None:
            started = time.perf_counter()
            proposals = self.segmenter.propose(rgb, vocabulary)
            timings["proposals"] = (time.perf_counter() - started) * 1e3
        return PreparedFrame(camera, msg, rgb, proposals, timings)

    def _note_format_mismatch(self, msg: CompressedImage) -> None:
        """Says once per declared `format` that it names another encoding than the frame's
        bytes hold (the frame is decoded by its bytes); a format said once is not checked
        again."""
        if msg.format in self._warned_formats:
            return
        note = format_mismatch(msg)
        if note is not None:
            self._warned_formats.add(msg.format)
            self.get_logger().warning(note)

    def _finish(self, batch: PreparedBatch) -> None:
        """Stage 2 of the batch (and stage 1 where not done yet), then each frame's outputs.
        When a batch of several frames fails as a whole, each frame is tried alone, so that one
        camera's frame cannot cost the others theirs."""
        frames, vocabulary = batch.frames, batch.vocabulary
        self.batch_sizes[len(frames)] += 1
        results: list[Segmentation | None] | None = None
        if len(frames) > 1:
            try:
                results = self.segmenter.segment_batch(
                    [f.rgb for f in frames], vocabulary, [f.proposals for f in frames]
                )
            except Exception as exc:  # noqa: BLE001 - each frame is tried alone below
                self.get_logger().warning(
                    f"stage 2 of a batch of {len(frames)} frames failed ({exc!r}); segmenting "
                    "each frame alone",
                    throttle_duration_sec=5.0,
                )
                results = None
        if results is None:
            results = [
                self._skip_on_error(f.camera, self._segment_alone, f, vocabulary) for f in frames
            ]
        for frame, segmentation in zip(frames, results, strict=True):
            if segmentation is not None:
                self._skip_on_error(frame.camera, self._publish, frame, segmentation)

    def _segment_alone(self, frame: PreparedFrame, vocabulary: EncodedVocabulary) -> Segmentation:
        return self.segmenter.segment(frame.rgb, vocabulary, frame.proposals)

    def _publish(self, frame: PreparedFrame, segmentation: Segmentation) -> None:
        """The frame's 3D (when depth is paired with it), labels, result, overlay and points."""
        segmentation.timings_ms = {**frame.timings_ms, **segmentation.timings_ms}
        if not self._running:
            return
        p = self.params
        camera = frame.camera
        started = time.perf_counter()
        depth = camera.depth_for(frame.msg, frame.rgb.shape[:2], p.max_input_pixels)
        points = None
        if depth is not None:
            try:
                points = add_segment_geometry(
                    segmentation, depth.depth_m, depth.intrinsics, p.max_depth_m
                )
            except ValueError as exc:  # 3D that cannot be made leaves the frame's 2D intact
                for segment in segmentation.segments:
                    segment.geometry = None
                segmentation.has_depth = False
                camera.count_unusable_depth(exc)
                depth = None
            segmentation.timings_ms["depth"] = (time.perf_counter() - started) * 1e3

        started = time.perf_counter()
        header = frame.msg.header
        camera.labels_pub.publish(array_to_image(segmentation.labels, "mono16", header))
        camera.result_pub.publish(segmentation_to_msg(segmentation, header))
        if camera.overlay_pub.get_subscription_count() > 0:
            overlay = render_overlay(frame.rgb, segmentation, alpha=p.overlay_alpha)
            camera.overlay_pub.publish(array_to_image(overlay, "rgb8", header))
            camera.stats.overlays += 1
        if depth is not None and camera.points_pub.get_subscription_count() > 0:
            if p.points_stride > 1:
                points = labelled_points(
                    depth.depth_m, depth.intrinsics, segmentation.labels, segmentation.scores,
                    p.max_depth_m, p.points_stride,
                )  # fmt: skip
            colors = class_colors(segmentation.class_names)
            camera.points_pub.publish(points_to_cloud(points, colors, header))
        with self._frame_lock:
            camera.stats.processed += 1
            camera.stats.with_depth += depth is not None
        segmentation.timings_ms["publish"] = (time.perf_counter() - started) * 1e3
        camera.logger.debug(
            "frame " + " ".join(f"{k}={v:.1f}ms" for k, v in segmentation.timings_ms.items())
        )

    # --- parameters and vocabulary ----------------------------------------------------------
    def _apply_segmenter_settings(self, p: SegmenterParameters) -> None:
        config = self.segmenter.config
        config.mask_threshold = p.mask_threshold
        config.unlabeled_threshold = p.unlabeled_threshold
        config.rejection = p.rejection
        config.min_segment_area = p.min_segment_area
        config.min_proposal_area = p.min_proposal_area
        config.ensemble_weight = p.ensemble_weight
        config.classifier = p.classifier
        config.processing_size = p.processing_size

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Validates a change (all parameters of one request together); a vocabulary or template
        change that differs from the last accepted one is queued for encoding."""
        with self._parameters_lock:
            try:
                changes = {
                    param.name: check_value(param.name, param.value)
                    for param in parameters
                    if param.name in DESCRIPTIONS  # not use_sim_time: rclpy's own
                }
                request = VocabularyRequest.from_parameters(
                    changes.get("vocabulary", self.params.vocabulary),
                    changes.get("prompt_templates", self.params.prompt_templates),
                    self.encoder,
                )
            except ValueError as exc:
                self.get_logger().warning(f"rejected parameter change: {exc}")
                return SetParametersResult(successful=False, reason=str(exc))
            for name, value in changes.items():
                setattr(self.params, name, value)
            self._apply_segmenter_settings(self.params)
            if request != self._requested:
                self._requested = request
                self._vocabulary_requests.put(request)
            return SetParametersResult(successful=True)

    def _swap_vocabulary(self, request: VocabularyRequest) -> None:
        started = time.monotonic()
        try:
            vocabulary = self.encoder.encode(
                request.names, request.templates, self._progress_logger(request)
            )
            self.segmenter.prepare_vocabulary(vocabulary)
        except NodeStoppedError:
            return
        except Exception as exc:  # noqa: BLE001 - the old vocabulary stays in force
            self._restore_vocabulary_parameters(request, exc)
            return
        self.vocabulary = vocabulary
        self._in_force = request
        self._publish_vocabulary(vocabulary)
        self.get_logger().info(
            f"vocabulary v{vocabulary.version} ({len(request.names)} classes) in force after "
            f"{(time.monotonic() - started) * 1e3:.0f} ms"
        )

    def _restore_vocabulary_parameters(self, failed: VocabularyRequest, exc: Exception) -> None:
        """After a change that was accepted but could not be encoded, sets the vocabulary and
        template parameters back to the vocabulary in force (unless a newer change is queued),
        so that they never show a vocabulary that is not in force."""
        with self._parameters_lock:
            restore = self._requested == failed
            if restore:
                self._requested = self._in_force
                for name, value in self._in_force.parameters.items():
                    setattr(self.params, name, list(value))
                self.set_parameters(
                    [Parameter(n, value=v) for n, v in self._in_force.parameters.items()]
                )
        self.get_logger().error(
            f"vocabulary change to {len(failed.names)} classes failed: {exc}; "
            + (
                f"vocabulary and prompt_templates set back to v{self.vocabulary.version}"
                if restore
                else "a newer change follows"
            )
        )

    def _progress_logger(self, request: VocabularyRequest) -> Callable[[int, int], None]:
        """An on_progress callback for VocabularyEncoder.encode: says when an encoding will take
        long (LONG_ENCODING_PROMPTS prompts or more) and how far it is every
        PROGRESS_INTERVAL_S; raises NodeStoppedError once the node stops, ending the encoding."""
        logger = self.get_logger()
        started = time.monotonic()
        last_report = started

        def on_progress(done: int, total: int) -> None:
            nonlocal last_report
            if not self._running:
                raise NodeStoppedError
            prompts = total * len(request.templates)
            if prompts < LONG_ENCODING_PROMPTS:
                return
            now = time.monotonic()
            if done == 0:
                logger.info(
                    f"encoding {total} class names x {len(request.templates)} templates "
                    f"({prompts} prompts); this takes a while, and frames keep the vocabulary "
                    "in force until it is done"
                )
            elif now - last_report >= PROGRESS_INTERVAL_S and done < total:
                last_report = now
                left_s = (now - started) / done * (total - done)
                logger.info(
                    f"encoding vocabulary: {done}/{total} names ({100 * done // total} %), "
                    f"about {left_s:.0f} s left"
                )

        return on_progress

    def _publish_vocabulary(self, vocabulary: EncodedVocabulary) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        self.vocabulary_pub.publish(
            vocabulary_to_msg(
                vocabulary.version,
                vocabulary.class_names,
                class_colors(vocabulary.class_names),
                list(vocabulary.templates),
                header,
            )
        )

    # --- stopping ---------------------------------------------------------------------------
    def stop(self, timeout_s: float) -> bool:
        """Stops the workers: no frame is published after this returns. Waits at most
        `timeout_s` in all; returns False when a worker is still busy then (inside a CLIP
        forward, which cannot be interrupted). Safe to call more than once, and on a node whose
        start failed."""
        with self._frame_lock:
            self._running = False
            self._frame_lock.notify_all()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        stopped = not any(worker.is_alive() for worker in self._workers)
        if stopped and self._threads_before is not None:
            self._threads_before.apply()
            self._threads_before = None
        return stopped

    def destroy_node(self) -> None:
        self.stop(timeout_s=10.0)
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: `ovseg_segmenter --ros-args ...`."""
    return run_node(SegmenterNode, "ovseg_segmenter", argv)


if __name__ == "__main__":
    exit_now(main())
