"""Speed and memory of `ovseg segment RECORDING`, the offline path, on a generated recording.

    tools/in_env.sh python tools/bench_recording.py
    tools/in_env.sh python tools/bench_recording.py --vit-frames 60 --keep /tmp/bench

Writes a recording (MCAP, raw rgb8 sensor_msgs/Image on /camera/image_raw, --rate frames/s of
bag time) of --frames toy-world scenes at --size, then runs `ovseg segment` on it in a process
of its own, twice: with the bundled tiny model (its defaults) over every frame, and with
ViT-B-16 with random weights (written once to a safetensors file, as tools/multi_camera_bench.py
does) and --vit-classifier over the first --vit-frames frames (all by default: about 6.5 min
with the dense classifier on 2 CPU cores; the crop classifier takes seconds a frame there).
For each run it prints frames/s (the command's own figure: decode, both stages, overlay,
serialization and writing, without the model load), the wall time, the peak RSS of the process
(/proc VmHWM) and the most RSS sampled in the first and in the last quarter of the run, to show
that memory stays flat as frames stream.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

TOPIC = "/camera/image_raw"
VOCAB_REAL = "person,chair,table,floor,wall,sofa|couch,plant"
RATE_LINE = re.compile(r"\(([0-9.]+) frames/s\)")
SAMPLE_S = 0.2
"""Seconds between two memory samples of the measured process."""


def write_recording(path: Path, frames: int, width: int, height: int, rate: float) -> Path:
    """A bag folder at `path` with `frames` toy-world scenes (seeds from EVAL_SEEDS.start)
    as rgb8 Images on TOPIC, 1/rate s apart; returns its .mcap file."""
    from builtin_interfaces.msg import Time
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from ovseg_ros.engine.toy_world import EVAL_SEEDS, generate_scene
    from ovseg_ros.recordings import RecordingWriter
    from ovseg_ros.ros.conversions import array_to_image

    start_ns = time.time_ns()
    with RecordingWriter(path, "mcap") as writer:
        writer.add_topic(TOPIC, "sensor_msgs/msg/Image")
        for index in range(frames):
            timestamp = start_ns + round(index * 1e9 / rate)
            sec, nanosec = divmod(timestamp, 1_000_000_000)
            header = Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id="camera")
            scene = generate_scene(EVAL_SEEDS.start + index, height=height, width=width)
            message = array_to_image(scene.image, "rgb8", header)
            writer.write(TOPIC, timestamp, serialize_message(message))
    return next(path.glob("*.mcap"))


def memory_mib(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM: the peak RSS since the process's exec) of a running process in MiB; None
    once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = [re.search(rf"{name}:\s+(\d+) kB", status) for name in ("VmRSS", "VmHWM")]
    if None in values:
        return None
    rss, peak = (int(match.group(1)) / 1024 for match in values)
    return rss, peak


def run(name: str, command: list[str], log: Path) -> dict[str, float | str]:
    """Runs one `ovseg segment` (stdout to `log`), sampling its memory every SAMPLE_S; its
    figures. The peak is the last VmHWM read (wait4's ru_maxrss would not do: it also counts
    this process's memory, which the child holds from fork to exec)."""
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, cwd=ROOT)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set() and (values := memory_mib(process.pid)) is not None:
            samples.append(values)
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    process.wait()
    done.set()
    wall_s = time.monotonic() - started
    sampler.join()
    output = log.read_text().strip()
    if process.returncode != 0:
        raise RuntimeError(f"{name}: ovseg segment exited {process.returncode}: {output}")
    match = RATE_LINE.search(output)
    rss = [value for value, _ in samples]
    quarter = max(len(rss) // 4, 1)
    return {
        "frames_per_s": float(match.group(1)) if match else float("nan"),
        "wall_s": wall_s,
        "peak_rss_mib": max((peak for _, peak in samples), default=float("nan")),
        "rss_first_quarter_mib": max(rss[:quarter], default=float("nan")),
        "rss_last_quarter_mib": max(rss[-quarter:], default=float("nan")),
        "summary": output.splitlines()[-1] if output else "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames in the recording (300)")
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT (640x480)")
    parser.add_argument("--rate", type=float, default=10.0, help="frames/s of bag time (10)")
    parser.add_argument(
        "--vit-frames", type=int, help="frames for ViT-B-16 (default: all; 0 skips it)"
    )
    parser.add_argument("--vit-classifier", default="dense", choices=["crop", "dense"])
    parser.add_argument("--keep", help="folder for the recording and outputs (default: temporary)")
    args = parser.parse_args()
    vit_frames = args.frames if args.vit_frames is None else min(args.vit_frames, args.frames)
    from ovseg_ros.engine.toy_world import shape_classes

    width, height = (int(v) for v in args.size.lower().split("x"))
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-recording-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        made = time.monotonic()
        recording = write_recording(folder / "recording", args.frames, width, height, args.rate)
        size_mib = recording.stat().st_size / 2**20
        print(
            f"recording: {args.frames} frames {width}x{height} rgb8, {size_mib:.0f} MiB MCAP, "
            f"written in {time.monotonic() - made:.0f} s",
            flush=True,
        )
        ovseg = [sys.executable, "-m", "ovseg_ros.cli", "segment", str(recording)]
        ovseg += ["--device", "cpu"]
        shapes = ",".join(shape_classes())
        runs = [("tiny (crop)", [*ovseg, "--vocab", shapes, "--out", str(folder / "tiny")])]
        if vit_frames:
            from multi_camera_bench import random_checkpoint

            vit = ["--model", "ViT-B-16", "--checkpoint", str(random_checkpoint(folder))]
            vit += ["--classifier", args.vit_classifier]
            vit += ["--end", str((vit_frames - 0.5) / args.rate)]  # the first vit_frames
            name = f"ViT-B-16 random ({args.vit_classifier}), first {vit_frames} frames"
            runs.append((name, [*ovseg, "--vocab", VOCAB_REAL, "--out", str(folder / "vit"), *vit]))
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
        for index, (name, command) in enumerate(runs):
            result = run(name, command, folder / f"run-{index}.out")
            print(
                f"{name}: {result['frames_per_s']:.2f} frames/s, wall {result['wall_s']:.0f} s, "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB, RSS max in the first / last "
                f"quarter {result['rss_first_quarter_mib']:.0f} / "
                f"{result['rss_last_quarter_mib']:.0f} MiB\n  {result['summary']}",
                flush=True,
            )
        print(f"load average after: {os.getloadavg()}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
