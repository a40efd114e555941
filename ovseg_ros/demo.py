"""`make demo`: the whole ROS pipeline on this machine, offline.

A frame publisher plays images, the segmenter node segments them, and a recorder saves the
overlays and prints each frame's latency (image stamp to result received) and, where ground truth
is known, the mIoU. By default it plays held-out toy-world scenes with the committed tiny CLIP;
with arguments it runs real weights on your images:

  python -m ovseg_ros.demo --model ViT-B-16 --pretrained openai \
      --images ~/pictures --vocab "person,chair,floor" --rate 0.2
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.clip_model import default_checkpoint
from ovseg_ros.engine.metrics import ConfusionMatrix, class_iou, miou
from ovseg_ros.msg import SegmentationResult
from ovseg_ros.ros.frame_publisher import FramePublisher, image_files
from ovseg_ros.ros.segmenter_node import SegmenterNode

TINY_MODEL = "ovseg-tiny-clip"


@dataclass
class DemoFrames:
    """The frames to play: a folder of images, with ground-truth label maps when known."""

    folder: Path
    class_names: list[str]
    ground_truth: list[np.ndarray] | None = None


def toy_frames(folder: Path, count: int) -> DemoFrames:
    """Writes `count` held-out toy-world scenes as PNGs; ground truth in the shape label space."""
    folder.mkdir(parents=True, exist_ok=True)
    ground_truth = []
    for index in range(count):
        scene = toy_world.generate_scene(toy_world.EVAL_SEEDS.start + index)
        cv2.imwrite(str(folder / f"toy_{index:03d}.png"), scene.image[:, :, ::-1])
        ground_truth.append(scene.shape_labels)
    return DemoFrames(folder, toy_world.shape_classes(), ground_truth)


class Recorder(Node):
    """Matches results to the frames sent (by stamp), saves overlays, prints latency and mIoU."""

    def __init__(self, frames: DemoFrames, out: Path, **node_kwargs) -> None:
        super().__init__("ovseg_demo_recorder", **node_kwargs)
        self.frames = frames
        self.out = out
        self.sent: dict[tuple[int, int], int] = {}
        self.latencies_ms: list[float] = []
        self.done: set[int] = set()
        self.confusion = ConfusionMatrix(len(frames.class_names))
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Image, "image", self._on_image, reliable)
        self.create_subscription(
            SegmentationResult, "ovseg_segmenter/result", self._on_result, reliable
        )
        self.create_subscription(Image, "ovseg_segmenter/overlay", self._on_overlay, reliable)

    @staticmethod
    def _key(msg) -> tuple[int, int]:
        return (msg.header.stamp.sec, msg.header.stamp.nanosec)

    def _on_image(self, msg: Image) -> None:
        self.sent[self._key(msg)] = len(self.sent)

    def _on_result(self, msg: SegmentationResult) -> None:
        index = self.sent.get(self._key(msg))
        if index is None:
            return
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        latency_ms = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6
        self.latencies_ms.append(latency_ms)
        self.done.add(index)
        line = f"frame {index + 1:3d}: latency {latency_ms:7.1f} ms, {len(msg.segments)} segments"
        if self.frames.ground_truth is not None:
            labels = np.frombuffer(bytes(msg.labels.data), np.uint16).reshape(
                msg.labels.height, msg.labels.width
            )
            self.confusion.update(
                labels, self.frames.ground_truth[index % len(self.frames.ground_truth)]
            )
            line += f", mIoU so far {miou(class_iou(self.confusion)):.3f}"
        print(line, flush=True)

    def _on_overlay(self, msg: Image) -> None:
        index = self.sent.get(self._key(msg))
        if index is None:
            return
        rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
        cv2.imwrite(str(self.out / f"overlay_{index:03d}.png"), rgb[:, :, ::-1])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ovseg-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="folder of images (default: toy-world frames)")
    parser.add_argument("--vocab", help="comma-separated class names (needed with --images)")
    parser.add_argument("--model", default=TINY_MODEL, help="open_clip model name")
    parser.add_argument("--pretrained", default="", help="open_clip pretrained tag, e.g. openai")
    parser.add_argument("--checkpoint", default="", help="local CLIP weights file")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--frames", type=int, default=8, help="toy-world frames to play")
    parser.add_argument("--rate", type=float, default=2.0, help="frames per second sent")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before giving up")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where overlays go")
    args = parser.parse_args(argv)
    if args.images and not args.vocab:
        parser.error("--images needs --vocab")
    if args.model == TINY_MODEL and not (args.checkpoint or args.pretrained):
        args.checkpoint = str(default_checkpoint())
    return args


def run(args: argparse.Namespace) -> int:
    """Runs the demo; returns 0 when every frame got a result."""
    args.out.mkdir(parents=True, exist_ok=True)
    if args.images:
        frames = DemoFrames(args.images, [n.strip() for n in args.vocab.split(",") if n.strip()])
        count = len(image_files(args.images))
    else:
        frames = toy_frames(args.out / "frames", args.frames)
        count = args.frames
    rclpy.init()
    segmenter = SegmenterNode(
        parameter_overrides=[
            Parameter("model", value=args.model),
            Parameter("pretrained", value=args.pretrained),
            Parameter("checkpoint", value=args.checkpoint),
            Parameter("device", value=args.device),
            Parameter("vocabulary", value=frames.class_names),
            Parameter(
                "prompt_templates", value=["single"] if args.model == TINY_MODEL else ["vild14"]
            ),
            Parameter("input_reliability", value="reliable"),
            Parameter("max_age_s", value=0.0),
        ]
    )
    recorder = Recorder(frames, args.out)
    publisher = FramePublisher(
        parameter_overrides=[
            Parameter("source", value=str(frames.folder)),
            Parameter("rate_hz", value=args.rate),
            Parameter("loop", value=False),
        ]
    )
    executor = SingleThreadedExecutor()
    for node in (segmenter, recorder, publisher):
        executor.add_node(node)
    deadline = time.monotonic() + args.timeout
    try:
        while len(recorder.done) < count and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        for node in (publisher, recorder, segmenter):
            node.destroy_node()
        rclpy.try_shutdown()

    latencies = np.array(recorder.latencies_ms)
    print(f"\n{len(recorder.done)}/{count} frames segmented; overlays in {args.out}")
    if latencies.size:
        print(
            f"latency (image stamp -> result): mean {latencies.mean():.1f} ms, "
            f"p50 {np.percentile(latencies, 50):.1f} ms, p90 {np.percentile(latencies, 90):.1f} ms"
        )
    if frames.ground_truth is not None and recorder.done:
        print(f"mIoU over the frames: {miou(class_iou(recorder.confusion)):.3f}")
    return 0 if len(recorder.done) == count else 1


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
