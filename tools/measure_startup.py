"""Start-up time of the segmenter node: process start to first result, as a user meets it.

Starts `python -m ovseg_ros.ros.segmenter_node` with the given weights, publishes a 640x480 toy
scene every 0.2 s and prints the seconds from the process start to the node's "loaded" log
line and to the first ~/result, median over --runs.

    tools/in_env.sh python tools/measure_startup.py                      # tiny CLIP
    tools/in_env.sh python tools/measure_startup.py --model ViT-B-16     # random weights

With a model other than the tiny CLIP and no --checkpoint, random weights of that architecture
are written to a temporary safetensors file first (the node loads only real files).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def random_checkpoint(model_name: str, folder: Path) -> Path:
    """Random weights of `model_name` in a safetensors file."""
    from safetensors.torch import save_file

    from ovseg_ros.engine.clip_model import load_clip

    model = load_clip(model_name, random_weights=True, device="cpu").model
    path = folder / f"{model_name}-random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def one_start(model: str, checkpoint: Path, timeout_s: float) -> tuple[float, float]:
    """Seconds from process start to the "loaded" line and to the first result."""
    import cv2
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from ovseg_ros.engine import toy_world
    from ovseg_ros.msg import SegmentationResult
    from ovseg_ros.ros.conversions import array_to_image

    rgb = cv2.resize(toy_world.generate_scene(1_000_050).image, (640, 480))
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("startup_probe", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    publisher = node.create_publisher(Image, "/image", qos)
    first_result: list[float] = []
    node.create_subscription(
        SegmentationResult,
        "/ovseg_segmenter/result",
        lambda _: first_result.append(time.monotonic()),
        qos,
    )
    started, started_wall = time.monotonic(), time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "ovseg_ros.ros.segmenter_node", "--ros-args",
         "-p", f"model:={model}", "-p", f"checkpoint:={checkpoint}", "-p", "max_age_s:=0.0",
         "-p", "input_reliability:=reliable"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while not first_result and time.monotonic() - started < timeout_s:
            publisher.publish(array_to_image(rgb, "rgb8", Header(frame_id="camera")))
            executor.spin_once(timeout_sec=0.2)
            if process.poll() is not None:
                raise RuntimeError(f"the node exited: {process.stderr.read()}")
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[1]
        node.destroy_node()
        context.try_shutdown()
    if not first_result:
        raise RuntimeError(f"no result within {timeout_s} s")
    # The log stamp is wall-clock seconds: "[INFO] [1712345678.1] [ovseg_segmenter]: loaded ..."
    stamps = [line.split("] [")[1] for line in output.splitlines() if "]: loaded " in line]
    loaded_s = float(stamps[0]) - started_wall if stamps else float("nan")
    return loaded_s, first_result[0] - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ovseg-tiny-clip")
    parser.add_argument("--checkpoint", type=Path, help="default: tiny CLIP or random weights")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint
        if checkpoint is None:
            if args.model == "ovseg-tiny-clip":
                checkpoint = ROOT / "models" / "ovseg-tiny-clip.safetensors"
            else:
                checkpoint = random_checkpoint(args.model, Path(folder))
        runs = [one_start(args.model, checkpoint, args.timeout) for _ in range(args.runs)]
    loaded = statistics.median(r[0] for r in runs)
    first = statistics.median(r[1] for r in runs)
    print(
        f"{args.model}: process start -> model loaded {loaded:.1f} s, -> first result "
        f"{first:.1f} s (median of {args.runs}; each: "
        + ", ".join(f"{r[1]:.1f}" for r in runs)
        + " s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
