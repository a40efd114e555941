"""The `ovseg` command: open-vocabulary segmentation without ROS.

    ovseg segment photo.jpg more/*.png --vocab "person,chair,sofa|couch,floor" --out out/
    ovseg segment run1.mcap --topic /cam/image_raw --vocab "person,chair" --out run1-ovseg
    ovseg eval toy:shape --limit 50 --out eval/toy-shape
    ovseg eval /data/ade20k-150 --model ViT-B-16 --pretrained openai

Without --pretrained or --checkpoint, the project's tiny toy-world CLIP (ovseg-tiny-clip) loads
from the bundled models/ folder (installed package, source checkout or ROS share directory);
other models default to open_clip's "openai" weights where those exist. --checkpoint overrides
--pretrained. Every failure is one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ovseg_ros.engine.options import (
    CLASSIFIERS,
    DATASET_PROTOCOLS,
    DEFAULT_CLASSIFIER,
    DEFAULT_ENSEMBLE_WEIGHT,
    DEFAULT_MASK_THRESHOLD,
    DEFAULT_MIN_PROPOSAL_AREA,
    DEFAULT_PROCESSING_SIZE,
    DEFAULT_PROPOSAL_GENERATOR,
    DEFAULT_PROPOSAL_MODEL,
    DEFAULT_REJECTION,
    DEFAULT_UNLABELED_THRESHOLD,
    DEVICES,
    PAPER_SETTINGS,
    PRECISIONS,
    PROPOSAL_GENERATORS,
    RECOMMENDED_REJECTION,
    TINY_MODEL,
    TRAINING_FREE_GENERATORS,
    check_proposal_model,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    import cv2
    import numpy as np
    from std_msgs.msg import Header

    from ovseg_ros.engine.resize import ProcessingSize
    from ovseg_ros.engine.segmentation import Segmentation
    from ovseg_ros.engine.segmenter import TwoStageSegmenter
    from ovseg_ros.engine.vocabulary import EncodedVocabulary
    from ovseg_ros.recordings import Frame, Recording, RecordingWriter

# torch, open_clip and OpenCV are imported inside the functions that use them, so that building
# the parser (and answering --help) takes a fraction of a second.


class ProgressBar:
    """A one-line progress bar on stderr: redrawn in place on a terminal, else a line every
    10 %.

    unit: None shows seconds per image; a plural noun such as "frames" shows that many per
    second and the time left. A total that is an estimate may be passed: the bar then ends with
    update(done, final=True)."""

    def __init__(self, total: int, title: str, width: int = 30, unit: str | None = None) -> None:
        self.total = max(total, 1)
        self.title = title
        self.width = width
        self.unit = unit
        self.started = time.monotonic()
        self.interactive = sys.stderr.isatty()
        self.last_tenth = -1
        self.last_printed = -1

    def update(self, done: int, final: bool | None = None) -> None:
        """Draws `done` items of the total; final: whether this is the last update (default:
        done >= total)."""
        final = done >= self.total if final is None else final
        total = max(self.total, done)
        elapsed = time.monotonic() - self.started
        filled = round(self.width * done / total)
        line = f"{self.title} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
        line += self._rate(done, elapsed, final)
        if self.interactive:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        elif (tenth := 10 * done // total) > self.last_tenth or (
            final and done != self.last_printed
        ):
            self.last_tenth, self.last_printed = tenth, done
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def _rate(self, done: int, elapsed: float, final: bool) -> str:
        """The rate so far: "2.31 s/image", or with a unit "3.20 frames/s, 1:05 left"."""
        if not done or elapsed <= 0:
            return ""
        if self.unit is None:
            return f"{elapsed / done:.2f} s/image"
        left = "" if final else f", {_clock(elapsed / done * max(self.total - done, 0))} left"
        return f"{done / elapsed:.2f} {self.unit}/s{left}"

    def message(self, text: str) -> None:
        """A line of its own on stderr, above the bar (redrawn at the next update)."""
        sys.stderr.write(("\r\x1b[K" if self.interactive else "") + text + "\n")
        sys.stderr.flush()


def _clock(seconds: float) -> str:
    """Seconds as M:SS, or H:MM:SS from an hour."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    """`text` as an int or a finite float; ArgumentTypeError otherwise."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not {'an integer' if kind is int else 'a number'}: {text!r}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _seconds(text: str) -> float:
    """argparse type: a number of seconds >= 0."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _frame_size(text: str) -> tuple[int, int]:
    """argparse type: "WIDTHxHEIGHT" -> (width, height), both >= 1."""
    width, separator, height = text.lower().partition("x")
    if separator and width.isdigit() and height.isdigit() and int(width) and int(height):
        return int(width), int(height)
    raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x480, got {text!r}")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every subcommand that builds a segmenter."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=TINY_MODEL, help="open_clip model name (%(default)s)")
    group.add_argument("--pretrained", help="open_clip pretrained tag, e.g. openai")
    group.add_argument(
        "--checkpoint",
        help="local weights file (safetensors or state dict; overrides --pretrained); a relative "
        "path is looked up in the working directory, then in the installed package",
    )
    group.add_argument("--device", default="auto", choices=DEVICES)
    group.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32",
    )
    group.add_argument(
        "--templates",
        action="append",
        help="prompt template set (single, sculpture, imagenet80, vild14) or a template with "
        "'{}'; repeatable (default: single for the tiny model, else vild14); 'learned': the "
        "learned prompt vectors of a zsseg proposal checkpoint",
    )
    group.add_argument(
        "--paper",
        choices=PAPER_SETTINGS,
        help="run as the reference implementation's config of that name does (with its "
        "checkpoint as --proposal-checkpoint): maskformer proposals, crop, fp32, every non-empty "
        "mask, its test resize, prompts, ensemble weight and mask threshold; options given "
        "explicitly still apply",
    )
    group.add_argument(
        "--compile", action="store_true", help="torch.compile the CLIP image tower (crop path)"
    )
    group.add_argument(
        "--proposals",
        default=DEFAULT_PROPOSAL_GENERATOR,
        choices=PROPOSAL_GENERATORS,
        help="stage-1 proposal generator (%(default)s)",
    )
    group.add_argument("--max-proposals", type=_positive, default=100, help="(%(default)s)")
    group.add_argument(
        "--proposal-checkpoint",
        help="weights of the maskformer (default: bundled), sam or sam2 (required) generator",
    )
    _add_proposal_model(group)
    group.add_argument(
        "--classifier",
        default=DEFAULT_CLASSIFIER,
        choices=CLASSIFIERS,
        help="crop: one CLIP forward per mask (the paper); dense: one per frame (%(default)s)",
    )
    group.add_argument(
        "--mask-threshold", type=_fraction, default=DEFAULT_MASK_THRESHOLD, help="(%(default)s)"
    )
    group.add_argument(
        "--ensemble-weight",
        type=_fraction,
        default=DEFAULT_ENSEMBLE_WEIGHT,
        help="lambda of the geometric ensemble with a maskformer's class scores (%(default)s)",
    )
    group.add_argument(
        "--min-proposal-area",
        type=_count,
        default=DEFAULT_MIN_PROPOSAL_AREA,
        help="proposals with fewer pixels are dropped before CLIP (%(default)s)",
    )
    group.add_argument(
        "--rejection",
        type=_fraction,
        default=DEFAULT_REJECTION,
        help="open-set rejection strength: pixels less likely than this to show one of the "
        "vocabulary's classes are left unlabeled as unknown; 0 = off (%(default)s)",
    )
    group.add_argument(
        "--unlabeled-threshold",
        type=_fraction,
        default=DEFAULT_UNLABELED_THRESHOLD,
        help="pixels scoring below it are left unlabeled (%(default)s)",
    )
    _add_processing_size(group)


def _add_proposal_model(parser: argparse._ActionsContainer) -> None:
    """The sam / sam2 model type option, shared by the model options and `bench`."""
    parser.add_argument(
        "--proposal-model",
        default=DEFAULT_PROPOSAL_MODEL,
        help="model type of the sam (vit_b, vit_l, vit_h) or sam2 (hiera_t, hiera_s, hiera_b+, "
        "hiera_l, sam2_hiera_t, ...) generator (default: read from the proposal checkpoint)",
    )


def _processing_size(text: str) -> ProcessingSize:
    """argparse type: a processing size (resize.ProcessingSize.parse)."""
    from ovseg_ros.engine.resize import ProcessingSize

    try:
        return ProcessingSize.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_processing_size(parser: argparse._ActionsContainer) -> None:
    """The processing-size option, shared by the model options and `bench`."""
    parser.add_argument(
        "--processing-size",
        type=_processing_size,
        default=DEFAULT_PROCESSING_SIZE,
        help="the size both stages see: N or long:N, the long side at most N (downscale only); "
        "short:N or short:N:M, the short side N, up or down, the long side then at most M "
        "(short:512:2048 is the reference's test-time resize); 0 or native, as it is. Results "
        "come back at the input's size (%(default)s)",
    )


def _build(args: argparse.Namespace) -> TwoStageSegmenter:
    """The segmenter the model options describe, with the weight source defaults applied."""
    import open_clip

    from ovseg_ros.engine.clip_model import default_checkpoint
    from ovseg_ros.engine.segmenter import SegmenterConfig, build_segmenter

    pretrained, checkpoint = args.pretrained, args.checkpoint
    if not pretrained and not checkpoint:
        if args.model == TINY_MODEL:
            checkpoint = default_checkpoint()
        elif "openai" in open_clip.list_pretrained_tags_by_model(args.model):
            pretrained = "openai"
    config = SegmenterConfig(
        mask_threshold=args.mask_threshold,
        unlabeled_threshold=args.unlabeled_threshold,
        min_proposal_area=args.min_proposal_area,
        classifier=args.classifier,
        processing_size=args.processing_size,
        ensemble_weight=args.ensemble_weight,
        rejection=args.rejection,
    )
    paper: dict[str, object] = {}
    if args.paper:
        from ovseg_ros.engine.paper import check_checkpoint, paper_setting

        setting = paper_setting(args.paper)
        if not args.proposal_checkpoint or args.proposals != "maskformer":
            raise ValueError(
                f"--paper {args.paper} runs the reference's own checkpoint: give its "
                "model_final.pth as --proposal-checkpoint (with the maskformer proposals)"
            )
        paper = setting.segmenter_arguments()
    segmenter = build_segmenter(
        args.model,
        pretrained=pretrained,
        checkpoint=checkpoint,
        device=args.device,
        precision=args.precision,
        proposal_generator=args.proposals,
        max_proposals=args.max_proposals,
        config=config,
        proposal_checkpoint=args.proposal_checkpoint,
        compile_image_tower=args.compile,
        proposal_model=args.proposal_model or None,
        **paper,
    )
    if args.paper:
        check_checkpoint(setting, segmenter)
    return segmenter


def _encoder(segmenter: TwoStageSegmenter):
    """A VocabularyEncoder on the segmenter's CLIP, with its learned prompts (if any)."""
    from ovseg_ros.engine.vocabulary import VocabularyEncoder

    return VocabularyEncoder(segmenter.clip, learned=segmenter.learned_text)


def preset_defaults(args: argparse.Namespace) -> dict[str, object]:
    """Option defaults that --paper and eval's --protocol (named or implied by --paper) set, by
    argparse dest: the paper setting's values and the protocol's test resize. Empty without
    either. Options given on the command line override them (main parses twice)."""
    defaults: dict[str, object] = {}
    protocol = getattr(args, "protocol", None)
    if args.paper:
        from ovseg_ros.engine.paper import paper_setting

        setting = paper_setting(args.paper)
        values = setting.settings()
        del values["prompt_templates"]  # _templates: --templates appends to a default list
        defaults = {"proposals": values.pop("proposal_generator"), **values}
        if args.command == "eval" and not args.dataset.startswith("toy:"):
            if protocol and protocol != setting.protocol:
                raise ValueError(
                    f"--paper {args.paper} evaluates on --protocol {setting.protocol}, not "
                    f"{protocol}; leave --protocol out or pick the paper setting of that dataset"
                )
            protocol = setting.protocol
            defaults["protocol"] = protocol
    if protocol and "processing_size" not in defaults:
        from ovseg_ros.engine.dataset_protocols import dataset_protocol

        defaults["processing_size"] = dataset_protocol(protocol).processing_size
    return defaults


def _templates(args: argparse.Namespace) -> list[str]:
    """The prompt templates asked for, checked (ValueError) before any model loads."""
    from ovseg_ros.engine.prompts import resolve_templates

    templates = args.templates or (["single"] if args.model == TINY_MODEL else ["vild14"])
    if args.paper and not args.templates:
        from ovseg_ros.engine.paper import paper_setting

        templates = paper_setting(args.paper).settings()["prompt_templates"]
    resolve_templates(templates)
    return templates


def _vocabulary(text: str) -> list[str]:
    """A --vocab value as checked class names (ValueError with the reason)."""
    from ovseg_ros.engine.vocabulary import parse_class_list, validate_class_names

    return validate_class_names(parse_class_list(text))


def note_unknown_to_tiny_model(model: str, class_names: list[str]) -> None:
    """Says once on stderr when the bundled toy-world CLIP is asked for classes it never saw."""
    from ovseg_ros.engine import toy_world

    if model != TINY_MODEL:
        return
    known = {name.lower() for name in toy_world.shape_classes() + toy_world.color_classes()}
    unknown = [c for c in class_names if not known & {n.strip().lower() for n in c.split("|")}]
    if unknown:
        print(
            f"ovseg: note: the bundled {TINY_MODEL} knows only the toy world's shapes "
            f"({', '.join(toy_world.SHAPES)}) and colors ({', '.join(toy_world.COLORS)}), not "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; for real images use "
            "real CLIP weights, e.g. --model ViT-B-16 --pretrained openai (downloaded once) or "
            "--checkpoint FILE",
            file=sys.stderr,
        )


def output_stems(paths: list[Path]) -> list[str]:
    """The output file prefix of each input: its stem, with -2, -3, ... appended in input order
    where an earlier input took it (cat.jpg and cat.png, or a/cat.jpg and b/cat.jpg), compared
    without case (case-insensitive file systems)."""
    taken: set[str] = set()
    stems = []
    for path in paths:
        stem, number = path.stem, 1
        while stem.casefold() in taken:
            number += 1
            stem = f"{path.stem}-{number}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def input_problem(path: Path) -> str | None:
    """Why `path` cannot be an input image before reading it (missing, a directory), or None."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a directory, not an image file (give its files, e.g. DIR/*.jpg)"
    return None


def read_rgb(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB; ValueError saying why when it cannot be read or
    decoded."""
    import cv2
    import numpy as np

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from exc
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise ValueError("is not an image OpenCV can decode (PNG, JPEG, BMP, TIFF, WebP, ...)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def run_segment(args: argparse.Namespace) -> int:
    """`ovseg segment`: per image, <stem>_overlay.png, <stem>_labels.png (16-bit class
    indices, 65535 = unlabeled) and <stem>_segments.json in --out (stems made unique by
    output_stems)."""
    import cv2

    from ovseg_ros.engine.render import render_overlay
    from ovseg_ros.recordings import is_recording

    inputs = [Path(text) for text in args.images]
    if any(map(is_recording, inputs)):
        if len(inputs) > 1:
            raise ValueError("give one recording at a time, and image files apart from it")
        return run_segment_recording(args, inputs[0])
    if given := [option for option in RECORDING_OPTIONS if getattr(args, option) is not None]:
        raise ValueError(
            f"{', '.join('--' + option for option in given)}: only for a recording (a bag "
            "folder with metadata.yaml, or a .mcap or .db3 file)"
        )
    names = _vocabulary(args.vocab)
    templates = _templates(args)
    paths = []
    for path in inputs:
        if problem := input_problem(path):
            print(f"ovseg segment: error: {path}: {problem}", file=sys.stderr)
        else:
            paths.append(path)
    if not paths:
        return 2
    note_unknown_to_tiny_model(args.model, names)
    segmenter = _build(args)
    vocabulary = _encoder(segmenter).encode(names, templates)
    out = Path(args.out or "ovseg-out")
    out.mkdir(parents=True, exist_ok=True)
    failures = len(args.images) - len(paths)
    for path, stem in zip(paths, output_stems(paths), strict=True):
        try:
            image = read_rgb(path)
            segmentation = segmenter.segment(image, vocabulary)
            summary = {
                "image": str(path),
                "class_names": segmentation.class_names,
                "vocabulary_version": segmentation.vocabulary_version,
                "rejected_pixels": segmentation.rejected_pixels,
                "timings_ms": segmentation.timings_ms,
                "segments": [
                    {
                        "class_id": s.class_id,
                        "class_name": s.class_name,
                        "score": s.score,
                        "box_xywh": list(s.box),
                        "area": s.area,
                    }
                    for s in segmentation.segments
                ],
            }
            text = json.dumps(summary, indent=2, allow_nan=False)  # NaN is no valid JSON
        except ValueError as exc:
            print(f"ovseg segment: error: {path}: {exc}", file=sys.stderr)
            failures += 1
            continue
        overlay = render_overlay(image, segmentation, alpha=args.alpha)
        cv2.imwrite(str(out / f"{stem}_overlay.png"), overlay[..., ::-1])
        cv2.imwrite(str(out / f"{stem}_labels.png"), segmentation.labels)
        (out / f"{stem}_segments.json").write_text(text + "\n")
        found = sorted({s.class_name for s in segmentation.segments})
        total_ms = sum(segmentation.timings_ms.values())
        renamed = f" -> {out / stem}_*" if stem != path.stem else ""
        print(f"{path}: {', '.join(found) or 'nothing'} ({total_ms:.0f} ms){renamed}")
    return 1 if failures else 0


RECORDING_OPTIONS = ("topic", "every", "start", "end", "storage", "video")
"""The `ovseg segment` options (argparse dests) that apply to a recording only."""
RECORDING_STORAGES = ("mcap", "sqlite3")
"""Storage formats of an output bag (recordings.STORAGES, named here without importing it)."""
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
"""--video file suffix -> the OpenCV FourCC it is written with."""


def _image_messages() -> dict[str, tuple[type, Callable[[Any], np.ndarray]]]:
    """Image message type name -> (rclpy message class, converter to (H, W, 3) uint8 RGB);
    RuntimeError saying what to install when rclpy or the package's messages are missing."""
    try:
        from sensor_msgs.msg import CompressedImage, Image

        from ovseg_ros.ros.conversions import compressed_to_rgb, image_to_rgb
    except ImportError as exc:
        raise RuntimeError(
            f"segmenting a recording needs rclpy and the ovseg_ros messages ({exc}): run it in a "
            "sourced ROS 2 workspace with ovseg_ros built, or see README, Install"
        ) from exc
    return {
        "sensor_msgs/msg/Image": (Image, image_to_rgb),
        "sensor_msgs/msg/CompressedImage": (CompressedImage, compressed_to_rgb),
    }


def _decode_frame(
    frame: Frame, messages: dict[str, tuple[type, Callable[[Any], np.ndarray]]]
) -> tuple[Header, np.ndarray]:
    """The header and (H, W, 3) uint8 RGB pixels of a recorded image (messages:
    _image_messages()); ValueError when its bytes are no such message or its pixels do not
    decode (an unknown encoding, bad JPEG data)."""
    from rclpy.serialization import deserialize_message

    message_class, to_rgb = messages[frame.msgtype]
    try:
        image = deserialize_message(frame.data, message_class)
    except RuntimeError as exc:  # rclpy's RMWError
        raise ValueError(f"not a valid {frame.msgtype}: {exc}") from exc
    return image.header, to_rgb(image)


def _recording_output(args: argparse.Namespace, path: Path) -> tuple[Path, Path | None]:
    """The output bag and the --video file, checked before any model loads: the bag must not
    exist (default: NAME-ovseg in the working directory), the video needs a known suffix."""
    out = Path(args.out or f"{path.stem if path.is_file() else path.name}-ovseg")
    if out.exists():
        raise ValueError(f"{out} exists already; give another --out or remove it")
    video = None if args.video is None else Path(args.video)
    if video is not None and video.suffix.lower() not in VIDEO_CODECS:
        raise ValueError(f"--video {video}: give a {', '.join(VIDEO_CODECS)} file")
    return out, video


def _only_image_topic(recording: Recording) -> str:
    """The image topic of a recording that has exactly one; ValueError listing them otherwise."""
    topics = recording.image_topics()
    if len(topics) == 1:
        return next(iter(topics))
    listed = ", ".join(topics) or "none"
    raise ValueError(f"{recording.path}: give --topic; its image topics: {listed}")


class _SegmentedRecording:
    """The output of `ovseg segment RECORDING`: a bag with the node's topics (and optionally a
    video of the overlays), opened at the first frame so that an empty time window leaves no
    empty bag. close() finishes both, so that what was written stays readable."""

    def __init__(
        self, out: Path, storage: str, video_path: Path | None, video_fps: float, alpha: float
    ) -> None:
        from ovseg_ros.launch_plan import NODE_NAME

        self.out, self.storage, self.alpha = out, storage, alpha
        self.video_path, self.video_fps = video_path, video_fps
        self.topics = {
            name: f"/{NODE_NAME}/{name}" for name in ("labels", "result", "overlay", "vocabulary")
        }
        self.writer: RecordingWriter | None = None
        self.video: cv2.VideoWriter | None = None
        self.video_size = (0, 0)

    def open(self, timestamp_ns: int, vocabulary: EncodedVocabulary) -> None:
        """Creates the bag and writes the vocabulary at timestamp_ns (ns since the epoch, also
        its header stamp)."""
        from builtin_interfaces.msg import Time
        from rclpy.serialization import serialize_message
        from std_msgs.msg import Header

        from ovseg_ros.engine.render import class_colors
        from ovseg_ros.recordings import RecordingWriter
        from ovseg_ros.ros.conversions import vocabulary_to_msg

        self.writer = RecordingWriter(self.out, self.storage)
        self.writer.add_topic(self.topics["labels"], "sensor_msgs/msg/Image")
        self.writer.add_topic(self.topics["result"], "ovseg_ros/msg/SegmentationResult")
        self.writer.add_topic(self.topics["overlay"], "sensor_msgs/msg/Image")
        self.writer.add_topic(self.topics["vocabulary"], "ovseg_ros/msg/Vocabulary", latched=True)
        sec, nanosec = divmod(timestamp_ns, 1_000_000_000)
        message = vocabulary_to_msg(
            vocabulary.version,
            vocabulary.class_names,
            class_colors(vocabulary.class_names),
            list(vocabulary.templates),
            Header(stamp=Time(sec=sec, nanosec=nanosec)),
        )
        self.writer.write(self.topics["vocabulary"], timestamp_ns, serialize_message(message))

    def write(
        self, timestamp_ns: int, header: Header, rgb: np.ndarray, segmentation: Segmentation
    ) -> None:
        """The labels, result and overlay of one frame ((H, W, 3) uint8 RGB) at its bag
        timestamp (ns) with its header; the overlay also to the video, at the first frame's
        size."""
        import cv2
        from rclpy.serialization import serialize_message

        from ovseg_ros.engine.render import render_overlay
        from ovseg_ros.ros.conversions import array_to_image, segmentation_to_msg

        assert self.writer is not None, "open() comes first"
        overlay = render_overlay(rgb, segmentation, alpha=self.alpha)
        for name, message in (
            ("labels", array_to_image(segmentation.labels, "mono16", header)),
            ("result", segmentation_to_msg(segmentation, header)),
            ("overlay", array_to_image(overlay, "rgb8", header)),
        ):
            self.writer.write(self.topics[name], timestamp_ns, serialize_message(message))
        if self.video_path is None:
            return
        if self.video is None:
            self.video_size = overlay.shape[1::-1]
            codec = cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.video_path.suffix.lower()])
            self.video = cv2.VideoWriter(
                str(self.video_path), codec, self.video_fps, self.video_size
            )
            if not self.video.isOpened():
                raise RuntimeError(f"OpenCV cannot write the video {self.video_path}")
        same_size = cv2.resize(overlay, self.video_size)
        self.video.write(cv2.cvtColor(same_size, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.video is not None:
            self.video.release()


def run_segment_recording(args: argparse.Namespace, path: Path) -> int:
    """`ovseg segment RECORDING`: segments the frames of one image topic and writes a new bag
    with the node's outputs (_SegmentedRecording) at each frame's bag timestamp and with its
    header. Frames are streamed: memory stays flat. A frame that does not decode is skipped
    with one line; a recording that breaks off ends the run with the bag written so far."""
    from ovseg_ros.recordings import RecordingError, open_recording

    names = _vocabulary(args.vocab)
    templates = _templates(args)
    out, video_path = _recording_output(args, path)
    messages = _image_messages()
    every = args.every or 1
    with open_recording(path) as recording:
        topic = args.topic or _only_image_topic(recording)
        frames = recording.frames(topic, args.start, args.end, every)  # checks all of them
        output = _SegmentedRecording(
            out,
            args.storage or recording.storage,
            video_path,
            recording.frame_rate(topic) / every or 10.0,
            args.alpha,
        )
        note_unknown_to_tiny_model(args.model, names)
        segmenter = _build(args)
        vocabulary = _encoder(segmenter).encode(names, templates)
        expected = recording.expected_frames(topic, args.start, args.end, every)
        progress = ProgressBar(expected, f"{path.name} {topic}", unit="frames")
        read = segmented = 0
        failure = None
        try:
            for frame in frames:
                if output.writer is None:
                    output.open(frame.timestamp_ns, vocabulary)
                read += 1
                try:
                    header, rgb = _decode_frame(frame, messages)
                    segmentation = segmenter.segment(rgb, vocabulary)
                except ValueError as exc:
                    at = (frame.timestamp_ns - recording.start_ns) / 1e9
                    progress.message(f"ovseg segment: skipped the frame at {at:.3f} s: {exc}")
                else:
                    output.write(frame.timestamp_ns, header, rgb, segmentation)
                    segmented += 1
                progress.update(read, final=False)
        except RecordingError as exc:
            failure = exc
        finally:
            output.close()
    if read == 0 and failure is None:
        window = args.start is not None or args.end is not None
        raise ValueError(f"{path}: no frames of {topic}" + (" from --start to --end" * window))
    progress.update(read, final=True)
    elapsed = time.monotonic() - progress.started
    video = f"; overlay video {video_path}" if output.video is not None else ""
    print(
        f"{out}: {segmented} frames of {path} {topic} segmented, {read - segmented} skipped "
        f"({segmented / elapsed:.2f} frames/s){video}"
    )
    if failure is not None:
        kept = f"; {out} holds the frames before it" if output.writer is not None else ""
        print(f"ovseg segment: error: {failure}{kept}", file=sys.stderr)
        return 2
    return 1 if read > segmented else 0


EVAL_WORLDS = {
    "toy:shape": ("toy", "shape"),
    "toy:color": ("toy", "color"),
    "toy:photo": ("photo", "full"),
    "toy:photo-texture": ("photo", "texture"),
    "toy:photo-shading": ("photo", "shading"),
}
"""The generated evaluation worlds `ovseg eval` takes by name: (world, label space or variant)."""


def _eval_dataset(args: argparse.Namespace):
    """The dataset `ovseg eval` names: a generated world or a folder. A folder with instances/
    but no label folder is read for proposal figures only (with a note on stderr)."""
    from ovseg_ros.engine.datasets import FolderDataset, PhotoWorldDataset, ToyWorldDataset

    if args.dataset in EVAL_WORLDS:
        world, kind = EVAL_WORLDS[args.dataset]
        return ToyWorldDataset(kind) if world == "toy" else PhotoWorldDataset(kind)
    if args.dataset.startswith("toy:"):
        raise ValueError(
            f"unknown generated dataset {args.dataset!r}; known: {', '.join(EVAL_WORLDS)}"
        )
    if args.protocol:
        from ovseg_ros.engine.dataset_protocols import open_protocol_dataset

        if (args.image_dir, args.label_dir) != ("images", "labels"):
            raise ValueError(
                f"--protocol {args.protocol} fixes the folders; leave out --image-dir and "
                "--label-dir"
            )
        return open_protocol_dataset(args.dataset, args.protocol)
    root = Path(args.dataset)
    label_dir = args.label_dir
    if root.is_dir() and not (root / label_dir).exists() and (root / "instances").is_dir():
        print(
            f"ovseg eval: note: {root} has instances/ but no {label_dir}/: proposal figures only",
            file=sys.stderr,
        )
        label_dir = None
    return FolderDataset(root, image_dir=args.image_dir, label_dir=label_dir)


def _eval_settings(
    args: argparse.Namespace, segmenter: TwoStageSegmenter, templates: list[str]
) -> dict[str, object]:
    """The settings an `ovseg eval` report records."""
    settings: dict[str, object] = {
        "dataset": args.dataset,
        "model": f"{segmenter.clip.name} ({segmenter.clip.source})",
        "device": str(segmenter.clip.device),
        "precision": f"{args.precision} ({segmenter.clip.dtype_name})"
        + (", compiled" if args.compile else ""),
        "classifier": args.classifier,
        "templates": ", ".join(templates),
        "proposals": f"{args.proposals}, at most {args.max_proposals}",
        "mask_threshold": args.mask_threshold,
        "ensemble_weight": args.ensemble_weight,
        "min_proposal_area": args.min_proposal_area,
        "unlabeled_threshold": args.unlabeled_threshold,
        "rejection": args.rejection,
        "processing_size": str(args.processing_size),
    }
    if args.protocol:
        settings["protocol"] = args.protocol
    if args.paper:
        settings["paper"] = args.paper
    return settings


def _without_nan(value: Any) -> Any:
    """value (dicts, lists and numbers) with every NaN float replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


class _FirstSamples:
    """The first `count` samples of a dataset, read lazily, iterable more than once."""

    def __init__(self, dataset: Any, count: int) -> None:
        self.dataset, self.count = dataset, count

    def __iter__(self) -> Iterator[Any]:
        return (self.dataset[i] for i in range(self.count))


def run_open_set_eval(args: argparse.Namespace) -> int:
    """`ovseg eval --open-set`: hidden-class subsets, the operating points of the rejection
    strength, AUROC (open_set.py); open_set.json and open_set.md in --out."""
    from ovseg_ros.engine.open_set import (
        evaluate_open_set,
        hidden_subsets,
        operating_points_markdown,
    )

    dataset = _eval_dataset(args)
    if not dataset.class_names:
        raise ValueError(f"--open-set needs a dataset with class labels; {args.dataset} has none")
    subsets = hidden_subsets(
        dataset.class_names, count=args.hidden_subsets, size=args.hide, seed=args.hidden_seed
    )
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    templates = _templates(args)
    note_unknown_to_tiny_model(args.model, dataset.class_names)
    segmenter = _build(args)
    encoder = _encoder(segmenter)
    progress = ProgressBar(count * len(subsets), f"eval {args.dataset} --open-set")
    evaluation = evaluate_open_set(
        segmenter,
        lambda names: encoder.encode(names, templates),
        _FirstSamples(dataset, count),
        dataset.class_names,
        dataset.ignore_index,
        subsets,
        on_image=progress.update,
    )
    settings = _eval_settings(args, segmenter, templates)
    settings.pop("rejection")  # every strength is swept
    table = operating_points_markdown(evaluation, recommended=RECOMMENDED_REJECTION)
    report = {"settings": settings, "open_set": _without_nan(dataclasses.asdict(evaluation))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_set.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    lines = [f"# ovseg eval {args.dataset} --open-set", ""]
    lines += [f"- {key}: {value}" for key, value in settings.items()]
    (out / "open_set.md").write_text("\n".join([*lines, "", table, ""]))
    print(table)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """`ovseg eval`: metrics.json and metrics.md in --out; with --proposals-only (or a folder of
    images and instances only) stage 1 alone and its class-agnostic figures; with --open-set
    the open-set figures (run_open_set_eval)."""
    from ovseg_ros.engine.evaluate import evaluate, evaluate_proposals, metrics_markdown

    if args.open_set:
        return run_open_set_eval(args)
    dataset = _eval_dataset(args)
    proposals_only = args.proposals_only or not dataset.class_names
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    templates = _templates(args)
    if not proposals_only:
        note_unknown_to_tiny_model(args.model, dataset.class_names)
    segmenter = _build(args)
    progress = ProgressBar(count, f"eval {args.dataset}")
    samples = iter(_FirstSamples(dataset, count))
    if proposals_only:
        evaluation = evaluate_proposals(segmenter, samples, on_image=progress.update)
    else:
        vocabulary = _encoder(segmenter).encode(dataset.class_names, templates)
        evaluation = evaluate(
            segmenter,
            vocabulary,
            samples,
            num_classes=len(dataset.class_names),
            ignore_index=dataset.ignore_index,
            unseen_classes=getattr(dataset, "unseen_classes", ()),
            on_image=progress.update,
        )
    settings = _eval_settings(args, segmenter, templates)
    if proposals_only:
        settings["stage"] = "proposals only (stage 1)"
    report = {
        "settings": settings,
        "num_images": evaluation.num_images,
        "metrics": None if evaluation.metrics is None else evaluation.metrics.to_dict(),
        "proposals": None if evaluation.proposals is None else evaluation.proposals.to_dict(),
        "mean_timings_ms": evaluation.mean_timings_ms,
    }
    text = json.dumps(report, indent=2, allow_nan=False)  # to_dict turns NaN into null
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(text + "\n")
    markdown = metrics_markdown(evaluation, f"ovseg eval {args.dataset}", settings)
    (out / "metrics.md").write_text(markdown)
    print(markdown)
    if evaluation.metrics is not None:
        m = evaluation.metrics
        split = (
            f"; seen {100 * m.seen_miou:.1f} %, unseen {100 * m.unseen_miou:.1f} %, "
            f"hIoU {100 * m.hiou:.1f} %"
        )
        print(f"mIoU {100 * m.miou:.1f} %" + (split if m.unseen_classes else ""))
    if evaluation.proposals is not None:
        print(evaluation.proposals.summary())
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """`ovseg bench`: prints the table and writes bench.json / bench.md."""
    from ovseg_ros import benchmark

    check_proposal_model(args.proposal_generator, args.proposal_model)
    if args.node and args.proposal_generator not in TRAINING_FREE_GENERATORS:
        raise ValueError(
            f"--node times the node with a training-free generator only "
            f"({', '.join(TRAINING_FREE_GENERATORS)})"
        )
    width, height = args.size
    results = []
    for precision in args.precision:
        for classifier in args.classifier:
            settings = benchmark.BenchSettings(
                model=args.model,
                pretrained=args.pretrained,
                checkpoint=args.checkpoint,
                device=args.device,
                precision=precision,
                width=width,
                height=height,
                proposals=args.proposals,
                proposal_generator=args.proposal_generator,
                proposal_model=args.proposal_model,
                classifier=classifier,
                compile_image_tower=args.compile,
                iterations=args.iterations,
                warmup=args.warmup,
                pipeline=args.pipeline,
                processing_size=str(args.processing_size),
                profile=args.profile,
            )
            print(f"benchmarking {classifier} / {precision} ...", file=sys.stderr, flush=True)
            results.append(benchmark.run_benchmark(settings))
    node = benchmark.run_node_benchmark(results[0].settings) if args.node else None
    report = benchmark.write_report(results, benchmark.machine_description(), Path(args.out), node)
    print(report)
    return 0


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(defaults: dict[str, object] | None = None) -> argparse.ArgumentParser:
    """The `ovseg` argument parser; imports nothing heavy."""
    parser = _Parser(
        prog="ovseg", description="Open-vocabulary semantic segmentation (Xu et al., ECCV 2022)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment image files or a ROS 2 recording")
    segment.add_argument(
        "images",
        nargs="+",
        metavar="INPUT",
        help="image files, or one ROS 2 recording: a bag folder (with metadata.yaml), or a "
        ".mcap or .db3 file",
    )
    segment.add_argument(
        "--vocab", required=True, help='comma-separated classes, "a|b" for synonyms'
    )
    segment.add_argument(
        "--out",
        help="images: the output folder (ovseg-out); a recording: the output bag, a folder that "
        "must not exist (NAME-ovseg)",
    )
    segment.add_argument(
        "--alpha", type=_fraction, default=0.5, help="overlay opacity, 0 to 1 (%(default)s)"
    )
    recording = segment.add_argument_group(
        "recording",
        "a ROS 2 bag in, a bag out: the node's labels, result, overlay and vocabulary topics, at "
        "each frame's bag timestamp, with its header",
    )
    recording.add_argument(
        "--topic",
        help="image topic, sensor_msgs/Image or CompressedImage (default: the only one)",
    )
    recording.add_argument("--every", type=_positive, help="segment every N-th frame only (1: all)")
    recording.add_argument(
        "--start", type=_seconds, help="seconds into the recording to start at (0)"
    )
    recording.add_argument(
        "--end", type=_seconds, help="seconds into the recording to stop at (its end)"
    )
    recording.add_argument(
        "--storage",
        choices=RECORDING_STORAGES,
        help="storage of the output bag (default: the recording's)",
    )
    recording.add_argument(
        "--video",
        help="also write the overlays to this video file (.mp4, .avi or .mkv), at the "
        "recording's mean frame rate",
    )
    _add_model_arguments(segment)
    segment.set_defaults(run=run_segment, **(defaults or {}))

    evaluation = commands.add_parser(
        "eval", help="evaluate on a dataset (mIoU, and proposal figures where instances exist)"
    )
    evaluation.add_argument(
        "dataset",
        help="toy:shape, toy:color, toy:photo (photo textures, lighting, blur, noise, JPEG), "
        "toy:photo-texture, toy:photo-shading, or a folder (classes.txt, images/, labels/, "
        "optional instances/; images/ and instances/ alone for proposal figures only)",
    )
    evaluation.add_argument(
        "--proposals-only",
        action="store_true",
        help="run stage 1 only and report its class-agnostic figures (mean best IoU per object, "
        "recall@0.5/0.75, proposals per frame, ms); needs instance maps",
    )
    evaluation.add_argument(
        "--protocol",
        choices=DATASET_PROTOCOLS,
        help="read the folder as the reference prepares that dataset: its class list, folders, "
        "seen/unseen split and test resize (the processing size unless given)",
    )
    evaluation.add_argument(
        "--open-set",
        action="store_true",
        help="open-set evaluation: hide random subsets of the classes from the vocabulary and "
        "report, per rejection strength, the hidden pixels labelled unknown, the known pixels "
        "kept, in-vocabulary mIoU, and the AUROC of known vs hidden pixels",
    )
    evaluation.add_argument(
        "--hidden-subsets", type=_positive, default=3, help="--open-set: subsets (%(default)s)"
    )
    evaluation.add_argument(
        "--hide", type=_positive, default=2, help="--open-set: classes per subset (%(default)s)"
    )
    evaluation.add_argument(
        "--hidden-seed", type=_count, default=0, help="--open-set: subsets' seed (%(default)s)"
    )
    evaluation.add_argument("--limit", type=_positive, help="evaluate the first N images only")
    evaluation.add_argument("--image-dir", default="images", help="folder dataset: images")
    evaluation.add_argument("--label-dir", default="labels", help="folder dataset: labels")
    evaluation.add_argument("--out", default="ovseg-eval", help="output folder (%(default)s)")
    _add_model_arguments(evaluation)
    evaluation.set_defaults(run=run_eval, **(defaults or {}))

    bench = commands.add_parser(
        "bench", help="per-stage latency and frames/s (random weights unless given)"
    )
    bench.add_argument("--model", default="ViT-B-16", help="open_clip model (%(default)s)")
    bench.add_argument("--pretrained", help="open_clip pretrained tag (default: random weights)")
    bench.add_argument("--checkpoint", help="local weights file (default: random weights)")
    bench.add_argument("--device", default="auto", choices=DEVICES)
    bench.add_argument("--precision", nargs="+", default=["auto"], choices=PRECISIONS)
    bench.add_argument(
        "--compile", action="store_true", help="torch.compile the CLIP image tower (crop path)"
    )
    bench.add_argument(
        "--size", type=_frame_size, default="640x480", help="frame WIDTHxHEIGHT (640x480)"
    )
    bench.add_argument(
        "--proposals", type=_positive, default=100, help="masks per frame (%(default)s)"
    )
    _add_processing_size(bench)
    bench.add_argument(
        "--proposal-generator",
        default=DEFAULT_PROPOSAL_GENERATOR,
        choices=PROPOSAL_GENERATORS,
        help="stage-1 generator (%(default)s); sam and sam2 run with random weights of the real "
        "architecture, maskformer too when CLIP has random weights (else the bundled network)",
    )
    _add_proposal_model(bench)
    bench.add_argument("--classifier", nargs="+", default=list(CLASSIFIERS), choices=CLASSIFIERS)
    bench.add_argument("--iterations", type=_positive, default=3, help="timed frames (%(default)s)")
    bench.add_argument(
        "--warmup", type=_count, default=1, help="untimed frames first (%(default)s)"
    )
    bench.add_argument("--node", action="store_true", help="also time the node over DDS")
    bench.add_argument(
        "--profile",
        action="store_true",
        help="count, in one more frame per stage, the ops at which the host waits for the device",
    )
    bench.add_argument(
        "--pipeline",
        action="store_true",
        help="also time stage 1 of the next frame on a second thread while stage 2 runs (the "
        "node's pipeline parameter); with --node, run the node with pipeline:=true",
    )
    bench.add_argument("--out", default="ovseg-bench", help="output folder (%(default)s)")
    bench.set_defaults(run=run_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ovseg` command; returns the exit status. Every failure is one line on
    stderr: 2 for what the user can fix (arguments, inputs, weights, datasets), 1 for anything
    else, 130 when interrupted."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or an argument error already printed
        return int(exit_.code or 0)
    prefix = f"ovseg {args.command}: error:"
    try:
        defaults = preset_defaults(args) if "paper" in args else {}
        if defaults:
            args = build_parser(defaults).parse_args(argv)
        return args.run(args)
    except KeyboardInterrupt:
        print(f"ovseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:  # engine errors derive from these
        print(f"{prefix} {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, with the exception's type
        print(f"{prefix} unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
