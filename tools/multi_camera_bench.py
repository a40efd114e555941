"""Two cameras in one segmenter process against one process per camera, side by side in one run:
frames/s per camera, memory and model load time.

    tools/in_env.sh python tools/multi_camera_bench.py                         # crop
    tools/in_env.sh python tools/multi_camera_bench.py --classifier dense --warmup 10 --window 60

Configurations, run one after the other: A, one `ovseg_segmenter` with
`cameras:=['front:/front/image','rear:/rear/image']`; B, two, each `-r __ns:=/CAMERA -r
image:=/CAMERA/image`. Every segmenter: ViT-B-16 with random weights (written once to a
temporary safetensors file and given as `checkpoint`), `device` (cpu), the classifier,
`max_age_s:=0`, `input_reliability:=reliable`, the rest the node's defaults. This process
publishes 640x480 toy-world frames to /front/image and /rear/image at --rate each (the node
keeps only the newest frame), waits for a first result of each camera, lets --warmup seconds
pass, then counts the results on /CAMERA/ovseg_segmenter/result received within --window
seconds. Memory of the segmenter processes (summed in B) is sampled every 0.5 s from
/proc/PID/status (VmRSS; VmHWM, the peak) and /proc/PID/smaps_rollup (Pss: shared pages split
between the processes that map them); with a --device other than cpu also the GPU memory of
each process from nvidia-smi. Load time is the node's own "loaded ... in X s" figure (weights,
text embeddings of the default vocabulary) and the time from process start to that log line.
Segmenters are stopped with SIGINT (SIGKILL after 20 s) also on errors, Ctrl-C and SIGTERM;
their logs go to a temporary folder, or to --logs.

DDS stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), domain ROS_DOMAIN_ID
(101 when unset).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAMERAS = ("front", "rear")
MODEL = "ViT-B-16"
SAMPLE_PERIOD_S = 0.5
STOP_TIMEOUT_S = 20.0
LOADED_LINE = re.compile(r"\[(\d+\.\d+)\] \[[^\]]*\]: loaded .* in ([0-9.]+) s")
"""The node's log line once its model and vocabulary are in: wall stamp and its own seconds."""


def random_checkpoint(folder: Path) -> Path:
    """Random weights of ViT-B-16, as open_clip builds them, in a safetensors file."""
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model(MODEL, pretrained=None, device="cpu")
    path = folder / f"{MODEL}-random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@dataclass
class Segmenter:
    """One started segmenter process and its log file."""

    process: subprocess.Popen
    log: Path
    started_wall: float

    def load_times(self) -> tuple[float, float] | None:
        """The node's own load seconds and process start -> "loaded" line, once logged."""
        match = LOADED_LINE.search(self.log.read_text(errors="replace"))
        if match is None:
            return None
        return float(match.group(2)), float(match.group(1)) - self.started_wall


def segmenter_commands(
    config: str, checkpoint: Path, classifier: str, device: str
) -> list[list[str]]:
    """The command lines of configuration "A" (one process, both cameras) or "B" (one each)."""
    program = shutil.which("ovseg_segmenter")
    if program is None:
        raise RuntimeError("ovseg_segmenter is not on PATH; run this through tools/in_env.sh")
    params = ["-p", f"model:={MODEL}", "-p", f"checkpoint:={checkpoint}", "-p", f"device:={device}",
              "-p", f"classifier:={classifier}", "-p", "max_age_s:=0.0",
              "-p", "input_reliability:=reliable"]  # fmt: skip
    if config == "A":
        cameras = ",".join(f"'{name}:/{name}/image'" for name in CAMERAS)
        return [[program, "--ros-args", *params, "-p", f"cameras:=[{cameras}]"]]
    return [
        [program, "--ros-args", *params, "-r", f"__ns:=/{name}", "-r", f"image:=/{name}/image"]
        for name in CAMERAS
    ]


def start(command: list[str], log: Path) -> Segmenter:
    """Starts one segmenter in a session of its own (a Ctrl-C here reaches it only through
    stop()), its stdout and stderr to `log`."""
    with log.open("w") as out:
        started = time.time()
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    return Segmenter(process, log, started)


def stop(segmenters: list[Segmenter]) -> list[str]:
    """SIGINT to every segmenter still running, SIGKILL to one that has not exited after
    STOP_TIMEOUT_S; returns a note for each that did not exit 0."""
    for segmenter in segmenters:
        if segmenter.process.poll() is None:
            segmenter.process.send_signal(signal.SIGINT)
    notes = []
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for segmenter in segmenters:
        try:
            code = segmenter.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            segmenter.process.kill()
            code = segmenter.process.wait()
            notes.append(f"pid {segmenter.process.pid} killed after {STOP_TIMEOUT_S:g} s")
            continue
        if code != 0:
            tail = segmenter.log.read_text(errors="replace")[-1000:]
            notes.append(f"pid {segmenter.process.pid} exited {code}; its log ends:\n{tail}")
    return notes


def proc_kib(path: str, key: str) -> int:
    """The `key:  N kB` value of a /proc status-style file, in KiB (0 when gone)."""
    try:
        with open(path) as text:
            for line in text:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def gpu_mib(pids: list[int]) -> int:
    """GPU memory of these processes in MiB, from nvidia-smi (0 where it reports none)."""
    output = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    used = dict(line.split(", ") for line in output.strip().splitlines() if ", " in line)
    return sum(int(used.get(str(pid), 0)) for pid in pids)


@dataclass
class MemorySampler:
    """Samples the summed VmRSS, Pss (and GPU memory) of `pids` every SAMPLE_PERIOD_S on a
    thread of its own: (monotonic time, RSS KiB, PSS KiB, GPU MiB) per sample."""

    pids: list[int]
    gpu: bool
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_PERIOD_S):
            rss = sum(proc_kib(f"/proc/{pid}/status", "VmRSS") for pid in self.pids)
            pss = sum(proc_kib(f"/proc/{pid}/smaps_rollup", "Pss") for pid in self.pids)
            gpu = gpu_mib(self.pids) if self.gpu else 0
            self.samples.append((time.monotonic(), rss, pss, gpu))

    def peak_rss_kib(self) -> int:
        """Summed VmHWM: each process's own peak RSS (read while they run)."""
        return sum(proc_kib(f"/proc/{pid}/status", "VmHWM") for pid in self.pids)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Outcome:
    """What one configuration measured."""

    config: str
    processes: int
    window_s: float
    results: dict[str, int]
    intervals_s: dict[str, list[float]]
    latencies_s: list[float]
    rss_steady_mib: float
    pss_steady_mib: float
    rss_peak_mib: float
    hwm_mib: float
    gpu_steady_mib: float
    gpu_peak_mib: float
    load: list[tuple[float, float]]
    load_avg: tuple[float, float]
    notes: list[str]


class Bench:
    """The camera publisher and result subscriber node, shared by the configurations."""

    def __init__(self, rate_hz: float, seed: int) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        from ovseg_ros.engine import toy_world
        from ovseg_ros.msg import SegmentationResult
        from ovseg_ros.ros.conversions import array_to_image

        self.context = rclpy.Context()
        # Ctrl-C stays a KeyboardInterrupt, so that the segmenters are stopped in order.
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = Node("multi_camera_bench", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.frames = {
            name: [
                array_to_image(
                    toy_world.generate_scene(seed + 10 * index + i, 480, 640).image,
                    "rgb8",
                    Header(frame_id=name),
                )
                for i in range(4)
            ]
            for index, name in enumerate(CAMERAS)
        }
        self.publishers = {
            name: self.node.create_publisher(Image, f"/{name}/image", qos) for name in CAMERAS
        }
        self.received: dict[str, list[tuple[float, float]]] = {name: [] for name in CAMERAS}
        """Per camera: (monotonic receipt time, seconds since the frame's stamp) per result."""
        for name in CAMERAS:
            self.node.create_subscription(
                SegmentationResult,
                f"/{name}/ovseg_segmenter/result",
                lambda msg, name=name: self._on_result(name, msg),
                QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
            )
        self.sent = 0
        self.node.create_timer(1.0 / rate_hz, self._publish)

    def _publish(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        for name, frames in self.frames.items():
            msg = frames[self.sent % len(frames)]
            msg.header.stamp = stamp
            self.publishers[name].publish(msg)
        self.sent += 1

    def _on_result(self, name: str, msg) -> None:
        now = self.node.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.received[name].append((time.monotonic(), (now - stamp) * 1e-9))

    def spin_for(self, seconds: float, segmenters: list[Segmenter]) -> None:
        """Publishes and receives for `seconds`; raises RuntimeError if a segmenter exits."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
            for segmenter in segmenters:
                if segmenter.process.poll() is not None:
                    tail = segmenter.log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"a segmenter exited early:\n{tail}")

    def wait_first_results(self, timeout_s: float, segmenters: list[Segmenter]) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(self.received.values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no result of every camera within {timeout_s:g} s")
            self.spin_for(0.5, segmenters)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def run_config(
    bench: Bench, config: str, commands: list[list[str]], args: argparse.Namespace, logs: Path
) -> Outcome:
    """Starts the segmenters of one configuration, measures, stops them."""
    for received in bench.received.values():
        received.clear()
    segmenters: list[Segmenter] = []
    sampler: MemorySampler | None = None
    try:
        for index, command in enumerate(commands):
            segmenters.append(start(command, logs / f"{config}-{args.classifier}-{index}.log"))
        sampler = MemorySampler([s.process.pid for s in segmenters], args.device != "cpu")
        bench.wait_first_results(args.start_timeout, segmenters)
        bench.spin_for(args.warmup, segmenters)
        load_start = os.getloadavg()[0]
        window_start = time.monotonic()
        bench.spin_for(args.window, segmenters)
        window_end = time.monotonic()
        hwm_kib = sampler.peak_rss_kib()
        load = [s.load_times() or (float("nan"), float("nan")) for s in segmenters]
    finally:
        if sampler is not None:
            sampler.close()
        notes = stop(segmenters)

    def within(t: float) -> bool:
        return window_start <= t <= window_end

    results = {n: [r for r in received if within(r[0])] for n, received in bench.received.items()}
    window_samples = [s for s in sampler.samples if within(s[0])]
    return Outcome(
        config=config,
        processes=len(segmenters),
        window_s=window_end - window_start,
        results={name: len(r) for name, r in results.items()},
        intervals_s={
            name: [b[0] - a[0] for a, b in zip(r, r[1:], strict=False)]
            for name, r in results.items()
        },
        latencies_s=[r[1] for received in results.values() for r in received],
        rss_steady_mib=statistics.median(s[1] for s in window_samples) / 1024,
        pss_steady_mib=statistics.median(s[2] for s in window_samples) / 1024,
        rss_peak_mib=max(s[1] for s in sampler.samples) / 1024,
        hwm_mib=hwm_kib / 1024,
        gpu_steady_mib=statistics.median(s[3] for s in window_samples),
        gpu_peak_mib=max(s[3] for s in sampler.samples),
        load=load,
        load_avg=(load_start, os.getloadavg()[0]),
        notes=notes,
    )


def median_or_dash(values: list[float], fmt: str) -> str:
    return format(statistics.median(values), fmt) if values else "-"


def table(outcomes: list[Outcome], classifier: str, gpu: bool) -> str:
    """The markdown table of the outcomes."""
    header = (
        "| classifier | configuration | processes | window s | "
        + " | ".join(f"{name} frames/s (results; median s between)" for name in CAMERAS)
        + " | median latency s | RSS steady MiB | RSS peak MiB (samples / VmHWM) | PSS steady MiB"
        + (" | GPU steady / peak MiB" if gpu else "")
        + " | load s (node / start->loaded) | load average (window start / end) |"
    )
    lines = [header, "|" + "---|" * (header.count(" | ") + 1)]
    names = {"A": "one process, two cameras", "B": "one process per camera"}
    for o in outcomes:
        cameras = [
            f"{o.results[name] / o.window_s:.3f} ({o.results[name]}; "
            f"{median_or_dash(o.intervals_s[name], '.1f')})"
            for name in CAMERAS
        ]
        cells = [
            classifier,
            f"{o.config}: {names[o.config]}",
            str(o.processes),
            f"{o.window_s:.0f}",
            *cameras,
            median_or_dash(o.latencies_s, ".1f"),
            f"{o.rss_steady_mib:.0f}",
            f"{o.rss_peak_mib:.0f} / {o.hwm_mib:.0f}",
            f"{o.pss_steady_mib:.0f}",
            *([f"{o.gpu_steady_mib:.0f} / {o.gpu_peak_mib:.0f}"] if gpu else []),
            ", ".join(f"{own:.1f} / {wall:.1f}" for own, wall in o.load),
            f"{o.load_avg[0]:.2f} / {o.load_avg[1]:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the segmenters are stopped on the way out."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classifier", choices=("crop", "dense"), default="crop")
    parser.add_argument("--device", default="cpu", help="the segmenters' device parameter")
    parser.add_argument("--rate", type=float, default=10.0, help="frames/s sent to each camera")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds after first results")
    parser.add_argument("--window", type=float, default=60.0, help="measured seconds")
    parser.add_argument(
        "--start-timeout", type=float, default=600.0, help="seconds to first results"
    )
    parser.add_argument("--configs", default="AB", help="which configurations, in order")
    parser.add_argument("--seed", type=int, default=1_000_200, help="first toy scene seed")
    parser.add_argument("--logs", type=Path, help="keep the segmenters' logs in this folder")
    args = parser.parse_args()
    if args.rate <= 0 or args.window < 1 or args.warmup < 0:
        parser.error("--rate must be > 0, --window >= 1, --warmup >= 0")
    if not args.configs or set(args.configs) - {"A", "B"}:
        parser.error("--configs takes A, B or both (AB, BA)")
    signal.signal(signal.SIGTERM, interrupt)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", "101")
    print(
        f"nproc {len(os.sched_getaffinity(0))}, ROS_DOMAIN_ID {os.environ['ROS_DOMAIN_ID']}, "
        f"{MODEL} random weights, classifier {args.classifier}, device {args.device}, "
        f"{args.rate:g} frames/s per camera (640x480), warm-up {args.warmup:g} s, "
        f"window {args.window:g} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="multi_camera_bench_") as folder:
        checkpoint = random_checkpoint(Path(folder))
        logs = args.logs or Path(folder)
        logs.mkdir(parents=True, exist_ok=True)
        bench = Bench(args.rate, args.seed)
        outcomes = []
        try:
            for config in args.configs:
                commands = segmenter_commands(config, checkpoint, args.classifier, args.device)
                outcomes.append(run_config(bench, config, commands, args, logs))
                print(f"{config} done", flush=True)
        except KeyboardInterrupt:
            print("interrupted; the segmenters are stopped", file=sys.stderr)
            return 130
        finally:
            bench.close()
    print()
    print(table(outcomes, args.classifier, args.device != "cpu"))
    for outcome in outcomes:
        for note in outcome.notes:
            print(f"{outcome.config}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
