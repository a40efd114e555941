"""`ovseg bench`: per-stage latency of the segmenter, and of the node end to end over DDS.

Speed does not depend on weight values, so real architectures (e.g. ViT-B-16) run with random
weights when no weights are given. Every figure is wall time on the machine named in the header;
compare modes only within one run.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.clip_model import ClipModel
from ovseg_ros.engine.maskformer.checkpoint import save_maskformer
from ovseg_ros.engine.maskformer.model import MaskFormer, MaskFormerConfig
from ovseg_ros.engine.options import (
    DEFAULT_PROCESSING_SIZE,
    DEFAULT_PROPOSAL_GENERATOR,
    SAM_GENERATORS,
)
from ovseg_ros.engine.proposals.base import (
    ProposalGenerator,
    Proposals,
    build_proposal_generator,
)
from ovseg_ros.engine.proposals.maskformer import MaskFormerProposalGenerator
from ovseg_ros.engine.render import render_overlay
from ovseg_ros.engine.resize import ProcessingSize
from ovseg_ros.engine.segmenter import (
    SegmenterConfig,
    TwoStageSegmenter,
    build_segmenter,
    enter_pipeline_threads,
)
from ovseg_ros.engine.vocabulary import EncodedVocabulary, VocabularyEncoder

STAGES = (
    "decode",
    "resize",
    "proposals",
    "crops",
    "clip_image",
    "aggregation",
    "segments",
    "render",
    "convert",
)
"""Per-frame stages reported, in pipeline order (resize: to the processing size, only when it
differs from the frame's; convert: Segmentation -> ROS messages)."""

VOCABULARY = ["person", "chair", "table", "floor", "wall", "door", "window", "plant"]


@dataclass
class BenchSettings:
    """What to benchmark. weights: exactly one of pretrained, checkpoint, or neither (random).
    width x height: the frame's size; processing_size: SegmenterConfig.processing_size as text
    ("640", "short:512:2048", "0" = the frame's own; resize.ProcessingSize)."""

    model: str = "ViT-B-16"
    pretrained: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    precision: str = "auto"
    width: int = 640
    height: int = 480
    proposals: int = 100
    proposal_generator: str = DEFAULT_PROPOSAL_GENERATOR
    proposal_model: str = ""
    classifier: str = "crop"
    compile_image_tower: bool = False
    iterations: int = 5
    warmup: int = 1
    pipeline: bool = False
    processing_size: str = DEFAULT_PROCESSING_SIZE
    profile: bool = False


@dataclass
class StageTiming:
    """Milliseconds of one stage over the timed iterations."""

    mean: float
    p50: float
    p90: float


@dataclass
class NodeFigures:
    """The node over DDS. latency: publish -> result with one frame in flight at a time;
    frames_per_s: results per second while frames arrive faster than the node takes them;
    pipeline: the node's `pipeline` parameter."""

    latency: StageTiming
    frames_per_s: float
    pipeline: bool


@dataclass
class BenchResult:
    """One benchmark configuration's figures; frames_per_s counts every stage listed; dtype: the
    image tower's compute dtype that settings.precision resolved to (e.g. "bfloat16").
    pipelined_frames_per_s (settings.pipeline only): stages 1 and 2 with stage 1 of the next
    frame on a second thread (the node's `pipeline`); serial_frames_per_s: the same stages one
    after the other, from their means. host_waits (settings.profile only): per stage ("stage 1",
    "stage 2") of one more frame, the count of each op at which the host waits for the device
    (count_host_waits)."""

    settings: BenchSettings
    stages: dict[str, StageTiming]
    frame_ms: StageTiming
    frames_per_s: float
    proposals_per_frame: float
    text_ms_cold: float
    text_ms_steady: float
    dtype: str
    pipelined_frames_per_s: float | None = None
    serial_frames_per_s: float | None = None
    host_waits: dict[str, dict[str, int]] | None = None


HOST_WAITS = (
    "aten::_local_scalar_dense",  # .item(), int(), bool() of a tensor
    "aten::nonzero",  # boolean indexing, nonzero()
    "aten::_unique2",
    "aten::unique_dim",
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
)
"""Ops whose result the host must read before it goes on: on a GPU each one waits for the device.
The aten ops show on any device (on a GPU each also shows as one of the CUDA runtime's
synchronisations, the last two, which only a GPU has)."""


def count_host_waits(run: Callable[[], object]) -> dict[str, int]:
    """Runs `run` once under the torch profiler (CPU, and CUDA when there is a GPU) and counts
    its calls of each op in HOST_WAITS; ops never called are left out."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        run()
    return dict(Counter(e.name for e in profile.events() if e.name in HOST_WAITS))


def box_masks(count: int, height: int, width: int) -> torch.Tensor:
    """count seeded random rectangles, each 1/10 to 1/2 of the frame per side: (count, H, W)
    bool."""
    rng = np.random.default_rng(count)
    masks = torch.zeros((count, height, width), dtype=torch.bool)
    for index in range(count):
        h, w = rng.integers(height // 10, height // 2), rng.integers(width // 10, width // 2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        masks[index, y : y + h, x : x + w] = True
    return masks


class PaddedProposals(ProposalGenerator):
    """Wraps a generator so that every frame has exactly `count` proposals: surplus masks are
    dropped, missing ones are filled with box_masks (benchmark only: stage-2 cost then depends
    on the asked-for count, not on how busy the test image is). The boxes are drawn once per
    frame size, in the first (warm-up) frame, so the proposals stage times the generator."""

    def __init__(self, inner: ProposalGenerator, count: int) -> None:
        self.inner = inner
        self.count = count
        self.takes_tensors = getattr(inner, "takes_tensors", False)
        self._boxes: dict[tuple[tuple[int, int], torch.device], torch.Tensor] = {}

    def __call__(self, image: np.ndarray, vocabulary: EncodedVocabulary | None = None) -> Proposals:
        proposals = self.inner(image, vocabulary)
        masks = proposals.masks[: self.count]
        missing = self.count - masks.shape[0]
        if missing > 0:
            key = (tuple(image.shape[:2]), masks.device)
            if key not in self._boxes:
                self._boxes[key] = box_masks(self.count, *key[0]).to(masks.device)
            masks = torch.cat([masks, self._boxes[key][:missing].to(masks.dtype)])
        return Proposals(masks=masks)


def machine_description() -> dict[str, object]:
    """The machine, torch version and thread count, for the report header."""
    info: dict[str, object] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def test_frame(width: int, height: int) -> np.ndarray:
    """A held-out toy-world scene resized to (height, width, 3) uint8 RGB."""
    scene = toy_world.generate_scene(toy_world.EVAL_SEEDS.start)
    return cv2.resize(scene.image, (width, height), interpolation=cv2.INTER_LINEAR)


def _stats(values: list[float]) -> StageTiming:
    array = np.asarray(values, dtype=np.float64)
    return StageTiming(
        mean=float(array.mean()),
        p50=float(np.percentile(array, 50)),
        p90=float(np.percentile(array, 90)),
    )


def _message_converter():
    """Segmentation -> ROS messages, when the ROS message packages are importable."""
    try:
        from std_msgs.msg import Header

        from ovseg_ros.ros.conversions import array_to_image, segmentation_to_msg
    except ImportError:
        return None

    def convert(segmentation, overlay) -> None:
        header = Header(frame_id="camera")
        segmentation_to_msg(segmentation, header)
        array_to_image(segmentation.labels, "mono16", header)
        array_to_image(overlay, "rgb8", header)

    return convert


def random_segment_anything(
    name: str, model: str, device: torch.device, max_proposals: int
) -> ProposalGenerator:
    """The "sam" or "sam2" generator with random weights of `model` ("": its default). Its mask
    filters are off (thresholds 0), so that every grid mask goes through NMS (random weights
    would pass few or none); the encoder and the decoder, which dominate, cost what they cost
    with real weights."""
    return build_proposal_generator(
        name,
        model=model or None,
        random_weights=True,
        device=device.type,
        max_proposals=max_proposals,
        pred_iou_threshold=0.0,
        stability_threshold=0.0,
    )


def random_reference_maskformer(
    clip: ClipModel, image_size: tuple[int, int], max_proposals: int
) -> MaskFormerProposalGenerator:
    """The paper's proposal network (MaskFormerConfig's defaults: ResNet-101c, 100 queries, six
    decoder layers) with random weights and clip's embedding size, loaded through the checkpoint
    reader as real weights are. image_size: (H, W) recorded as its input size, so frames of that
    size go in unresized."""
    torch.manual_seed(0)
    network = MaskFormer(MaskFormerConfig(embedding_dim=clip.embed_dim))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "maskformer-random.safetensors"
        save_maskformer(path, network, trained_classes=[], image_size=image_size)
        return MaskFormerProposalGenerator(
            checkpoint=path, max_proposals=max_proposals, device=str(clip.device), clip=clip
        )


SEGMENTER_STAGES = ("proposals", "crops", "clip_image", "aggregation", "segments")
"""The stages TwoStageSegmenter.segment times (stage 1 and stage 2)."""


def pipelined_frames_per_s(
    segmenter: TwoStageSegmenter, vocabulary: EncodedVocabulary, image: np.ndarray, frames: int
) -> float:
    """Frames/s of segmenter on `image` with propose() of the next frame on a second thread while
    segment() of the current one runs, as the node's `pipeline` does (and under its
    pipeline_thread_settings); timed over `frames` results after the first."""
    before = enter_pipeline_threads()
    handoff: queue.Queue = queue.Queue(maxsize=1)

    def stage_one() -> None:
        for _ in range(frames + 1):
            try:
                handoff.put(segmenter.propose(image, vocabulary))
            except Exception as exc:  # noqa: BLE001 - re-raised on the timing thread
                handoff.put(exc)
                return

    finished: list[float] = []
    worker = threading.Thread(target=stage_one, name="stage1", daemon=True)
    try:
        worker.start()
        for _ in range(frames + 1):
            proposals = handoff.get()
            if isinstance(proposals, Exception):
                raise proposals
            segmenter.segment(image, vocabulary, proposals)
            finished.append(time.perf_counter())
    finally:
        while worker.is_alive():  # let stage 1 finish even when stage 2 failed
            try:
                handoff.get(timeout=0.1)
            except queue.Empty:
                pass
        before.apply()
    return frames / (finished[-1] - finished[0])


def run_benchmark(settings: BenchSettings) -> BenchResult:
    """Times every stage over settings.iterations frames after settings.warmup frames.

    With random CLIP weights, the "maskformer" generator is the paper's architecture with random
    weights too (random_reference_maskformer); with real CLIP weights it is the bundled one.
    "sam" and "sam2" always run with random weights (random_segment_anything).
    """
    random_weights = not (settings.pretrained or settings.checkpoint)
    random_maskformer = random_weights and settings.proposal_generator == "maskformer"
    segment_anything = settings.proposal_generator in SAM_GENERATORS
    replaced = random_maskformer or segment_anything
    segmenter = build_segmenter(
        settings.model,
        pretrained=settings.pretrained,
        checkpoint=settings.checkpoint,
        device=settings.device,
        precision=settings.precision,
        proposal_generator=DEFAULT_PROPOSAL_GENERATOR if replaced else settings.proposal_generator,
        max_proposals=settings.proposals,
        config=SegmenterConfig(processing_size=settings.processing_size),
        random_weights=random_weights,
        compile_image_tower=settings.compile_image_tower,
    )
    if random_maskformer:
        segmenter.proposals = random_reference_maskformer(
            segmenter.clip,
            segmenter.config.processing_size.shape(settings.height, settings.width),
            settings.proposals,
        )
    if segment_anything:
        segmenter.proposals = random_segment_anything(
            settings.proposal_generator,
            settings.proposal_model,
            segmenter.clip.device,
            settings.proposals,
        )
        settings = replace(settings, proposal_model=segmenter.proposals.model_name)
    segmenter.config.classifier = settings.classifier
    segmenter.proposals = PaddedProposals(segmenter.proposals, settings.proposals)

    encoder = VocabularyEncoder(segmenter.clip)
    started = time.perf_counter()
    vocabulary = encoder.encode(VOCABULARY, "single")
    text_ms_cold = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    encoder.encode(VOCABULARY, "single")
    text_ms_steady = (time.perf_counter() - started) * 1e3

    frame = test_frame(settings.width, settings.height)
    ok, jpeg = cv2.imencode(".jpg", frame[:, :, ::-1])
    if not ok:
        raise RuntimeError("JPEG encoding of the test frame failed")
    convert = _message_converter()
    per_stage: dict[str, list[float]] = {stage: [] for stage in STAGES}
    frame_totals: list[float] = []
    counts: list[int] = []
    for iteration in range(settings.warmup + settings.iterations):
        times: dict[str, float] = {}
        clock = time.perf_counter()
        rgb = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        times["decode"] = (time.perf_counter() - clock) * 1e3
        segmentation = segmenter.segment(rgb, vocabulary)
        times.update(segmentation.timings_ms)
        clock = time.perf_counter()
        overlay = render_overlay(rgb, segmentation)
        times["render"] = (time.perf_counter() - clock) * 1e3
        if convert is not None:
            clock = time.perf_counter()
            convert(segmentation, overlay)
            times["convert"] = (time.perf_counter() - clock) * 1e3
        if iteration >= settings.warmup:
            for stage, value in times.items():
                per_stage.setdefault(stage, []).append(value)
            frame_totals.append(sum(times.values()))
            counts.append(settings.proposals)
    stages = {stage: _stats(values) for stage, values in per_stage.items() if values}
    frame_ms = _stats(frame_totals)
    pipelined = serial = None
    if settings.pipeline:
        pipelined = pipelined_frames_per_s(segmenter, vocabulary, rgb, settings.iterations)
        serial = 1000.0 / sum(
            stages[stage].mean for stage in ("resize", *SEGMENTER_STAGES) if stage in stages
        )
    host_waits = None
    if settings.profile:
        proposed: list[Proposals] = []
        stage_1 = count_host_waits(lambda: proposed.append(segmenter.propose(rgb, vocabulary)))
        host_waits = {
            "stage 1": stage_1,
            "stage 2": count_host_waits(lambda: segmenter.segment(rgb, vocabulary, proposed[0])),
        }
    return BenchResult(
        settings=settings,
        stages=stages,
        frame_ms=frame_ms,
        frames_per_s=1000.0 / frame_ms.mean,
        proposals_per_frame=float(np.mean(counts)),
        text_ms_cold=text_ms_cold,
        text_ms_steady=text_ms_steady,
        dtype=segmenter.clip.dtype_name,
        pipelined_frames_per_s=pipelined,
        serial_frames_per_s=serial,
        host_waits=host_waits,
    )


def _size_cell(settings: BenchSettings) -> str:
    """ "WxH", with the processing size when the frame is resized: "1920x1080 (at 640x360)"."""
    processing = ProcessingSize.parse(settings.processing_size)
    height, width = processing.shape(settings.height, settings.width)
    cell = f"{settings.width}x{settings.height}"
    return (
        cell
        if (height, width) == (settings.height, settings.width)
        else f"{cell} (at {width}x{height})"
    )


def format_report(
    results: list[BenchResult],
    machine: dict[str, object],
    node: NodeFigures | None = None,
) -> str:
    """Markdown: a header naming the machine, one table of per-stage means, one of p50/p90."""
    lines = [
        "# ovseg bench",
        "",
        "machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()),
        "",
    ]
    header = ["model", "classifier", "device", "precision", "size", "proposals"]
    stage_names = [s for s in STAGES if any(s in r.stages for r in results)]
    lines.append(
        "| "
        + " | ".join(header + [f"{s} ms" for s in stage_names])
        + " | frame ms (p50/p90) | frames/s |"
    )
    lines.append("|" + "---|" * (len(header) + len(stage_names) + 2))
    for result in results:
        s = result.settings
        cells = [
            s.model,
            s.classifier,
            s.device,
            f"{s.precision} ({result.dtype})" + (", compiled" if s.compile_image_tower else ""),
            _size_cell(s),
            f"{result.proposals_per_frame:.0f} {s.proposal_generator}"
            + (f" {s.proposal_model}" if s.proposal_model else ""),
        ]
        cells += [
            f"{result.stages[name].mean:.1f}" if name in result.stages else "-"
            for name in stage_names
        ]
        cells.append(
            f"{result.frame_ms.mean:.0f} ({result.frame_ms.p50:.0f}/{result.frame_ms.p90:.0f})"
        )
        cells.append(f"{result.frames_per_s:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for result in results:
        lines.append(
            f"text encoding ({len(VOCABULARY)} classes, 1 template), {result.settings.model} "
            f"{result.settings.classifier}: cold {result.text_ms_cold:.1f} ms, "
            f"steady state (cached) {result.text_ms_steady:.2f} ms"
        )
    for result in results:
        if result.pipelined_frames_per_s is not None:
            s = result.settings
            lines.append(
                f"pipelined (stage 1 of the next frame on a second thread), {s.model} "
                f"{s.classifier} {result.dtype}: {result.pipelined_frames_per_s:.2f} frames/s "
                f"for stages 1 and 2, against {result.serial_frames_per_s:.2f} one after the other"
            )
    if node is not None:
        s = results[0].settings
        lines.append(
            f"node over DDS, {s.model} {s.classifier} {s.width}x{s.height} ({s.proposal_generator} "
            f"proposals capped at {s.proposals}, pipeline {'on' if node.pipeline else 'off'}): "
            f"publish -> result mean {node.latency.mean:.0f} ms, p50 {node.latency.p50:.0f} ms, "
            f"p90 {node.latency.p90:.0f} ms; streaming {node.frames_per_s:.2f} frames/s"
        )
    for result in results:
        for stage, counts in (result.host_waits or {}).items():
            s = result.settings
            listed = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
            lines.append(
                f"host waits per frame, {stage}, {s.proposal_generator} {s.classifier} "
                f"{result.proposals_per_frame:.0f} masks: {listed or 'none'}"
            )
    for dense in results:
        for crop in results:
            if dense.settings.classifier == "dense" and crop.settings == replace(
                dense.settings, classifier="crop"
            ):
                lines.append(
                    f"frames/s ratio dense/crop, {dense.settings.model} {dense.dtype}: "
                    f"{dense.frames_per_s / crop.frames_per_s:.2f}x"
                )
    return "\n".join(lines) + "\n"


def write_report(
    results: list[BenchResult],
    machine: dict[str, object],
    out: Path,
    node: NodeFigures | None = None,
) -> str:
    """Writes bench.json and bench.md into `out`; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    report = format_report(results, machine, node)
    (out / "bench.md").write_text(report)
    payload = {
        "machine": machine,
        "results": [asdict(r) for r in results],
        "node": None if node is None else asdict(node),
    }
    (out / "bench.json").write_text(json.dumps(payload, indent=2))
    return report


STREAM_PERIOD_S = 1.0 / 30.0
"""Seconds between frames while measuring the node's streaming frames/s: a 30 Hz camera."""


def run_node_benchmark(settings: BenchSettings) -> NodeFigures:
    """The segmenter node over DDS: publish -> result latency with one frame in flight at a
    time (warmup + iterations frames), then results per second while frames stream in every
    STREAM_PERIOD_S (iterations + 1 results; the first starts the clock).

    Without weights, random ones are written to a temporary safetensors file and loaded as the
    node's checkpoint (the node itself never builds a random model).
    """
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from safetensors.torch import save_file
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from ovseg_ros.engine.clip_model import load_clip
    from ovseg_ros.msg import SegmentationResult
    from ovseg_ros.ros.conversions import array_to_image
    from ovseg_ros.ros.segmenter_node import SegmenterNode

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = settings.checkpoint or ""
        if not (settings.pretrained or checkpoint):
            torch.manual_seed(0)
            model = load_clip(settings.model, random_weights=True, device="cpu").model
            checkpoint = str(Path(folder) / "random.safetensors")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, checkpoint)
        context = rclpy.Context()
        rclpy.init(context=context)
        overrides = {
            "model": settings.model,
            "pretrained": settings.pretrained or "",
            "checkpoint": checkpoint,
            "device": settings.device,
            "precision": settings.precision,
            "compile_image_tower": settings.compile_image_tower,
            "proposal_generator": settings.proposal_generator,
            "max_proposals": settings.proposals,
            "processing_size": settings.processing_size,
            "classifier": settings.classifier,
            "vocabulary": VOCABULARY,
            "prompt_templates": ["single"],
            "input_reliability": "reliable",
            "max_age_s": 0.0,
            "pipeline": settings.pipeline,
        }
        segmenter = SegmenterNode(
            context=context,
            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
        )
        client = Node("ovseg_bench_client", context=context)
        reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        received: dict[tuple[int, int], float] = {}

        def on_result(msg: SegmentationResult) -> None:
            received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.perf_counter()

        client.create_subscription(
            SegmentationResult, "/ovseg_segmenter/result", on_result, reliable
        )
        publisher = client.create_publisher(Image, "/image", reliable)
        executor = MultiThreadedExecutor(num_threads=2, context=context)
        executor.add_node(segmenter)
        executor.add_node(client)
        frame = test_frame(settings.width, settings.height)
        latencies: list[float] = []
        try:
            while publisher.get_subscription_count() == 0:
                executor.spin_once(timeout_sec=0.1)
            for iteration in range(settings.warmup + settings.iterations):
                header = Header(stamp=client.get_clock().now().to_msg(), frame_id="camera")
                key = (header.stamp.sec, header.stamp.nanosec)
                sent = time.perf_counter()
                publisher.publish(array_to_image(frame, "rgb8", header))
                while key not in received:
                    executor.spin_once(timeout_sec=0.05)
                if iteration >= settings.warmup:
                    latencies.append((received[key] - sent) * 1e3)
            streamed = len(received)
            next_send = time.perf_counter()
            while len(received) < streamed + settings.iterations + 1:
                if time.perf_counter() >= next_send:
                    header = Header(stamp=client.get_clock().now().to_msg(), frame_id="camera")
                    publisher.publish(array_to_image(frame, "rgb8", header))
                    next_send += STREAM_PERIOD_S
                executor.spin_once(timeout_sec=STREAM_PERIOD_S / 2)
            arrivals = sorted(received.values())[streamed:]
        finally:
            executor.shutdown()
            segmenter.destroy_node()
            client.destroy_node()
            context.try_shutdown()
    frames_per_s = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    return NodeFigures(_stats(latencies), frames_per_s, settings.pipeline)
