"""The `ovseg` command: open-vocabulary segmentation without ROS.

    ovseg segment photo.jpg more/*.png --vocab "person,chair,sofa|couch,floor" --out out/
    ovseg eval toy:shape --limit 50 --out eval/toy-shape
    ovseg eval /data/ade20k-150 --model ViT-B-16 --pretrained openai

Without --pretrained or --checkpoint, the project's tiny toy-world CLIP (ovseg-tiny-clip) loads
from the committed models/ folder (source checkout or ROS share directory); other models
default to open_clip's "openai" weights where those exist.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import open_clip

from ovseg_ros.engine.clip_model import (
    DEVICES,
    PRECISIONS,
    TINY_MODEL,
    CheckpointMismatchError,
    WeightsNotFoundError,
    default_checkpoint,
)
from ovseg_ros.engine.datasets import DatasetError, FolderDataset, ToyWorldDataset
from ovseg_ros.engine.evaluate import evaluate, metrics_markdown
from ovseg_ros.engine.proposals import DEFAULT_PROPOSAL_GENERATOR, proposal_generator_names
from ovseg_ros.engine.render import render_overlay
from ovseg_ros.engine.segmenter import (
    CLASSIFIERS,
    SegmenterConfig,
    TwoStageSegmenter,
    build_segmenter,
)
from ovseg_ros.engine.vocabulary import VocabularyEncoder, parse_class_list


class ProgressBar:
    """A one-line progress bar on stderr: redrawn in place on a terminal, else a line every
    10 %."""

    def __init__(self, total: int, title: str, width: int = 30) -> None:
        self.total = max(total, 1)
        self.title = title
        self.width = width
        self.started = time.monotonic()
        self.interactive = sys.stderr.isatty()
        self.last_tenth = -1

    def update(self, done: int) -> None:
        elapsed = time.monotonic() - self.started
        rate = f"{elapsed / done:.2f} s/image" if done else ""
        filled = round(self.width * done / self.total)
        line = f"{self.title} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} "
        if self.interactive:
            sys.stderr.write("\r" + line + rate + ("\n" if done >= self.total else ""))
        elif (tenth := 10 * done // self.total) > self.last_tenth:
            self.last_tenth = tenth
            sys.stderr.write(line + rate + "\n")
        sys.stderr.flush()


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every subcommand that builds a segmenter."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=TINY_MODEL, help="open_clip model name (%(default)s)")
    group.add_argument("--pretrained", help="open_clip pretrained tag, e.g. openai")
    group.add_argument("--checkpoint", help="local weights file (safetensors or state dict)")
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
        help="prompt template set (single, imagenet80, vild14) or a template with '{}'; "
        "repeatable (default: single for the tiny model, else vild14)",
    )
    group.add_argument(
        "--compile", action="store_true", help="torch.compile the CLIP image tower (crop path)"
    )
    group.add_argument(
        "--proposals",
        default=DEFAULT_PROPOSAL_GENERATOR,
        choices=proposal_generator_names(),
        help="stage-1 proposal generator (%(default)s)",
    )
    group.add_argument("--max-proposals", type=int, default=100, help="(%(default)s)")
    group.add_argument(
        "--proposal-checkpoint", help="weights of the maskformer generator (default: bundled)"
    )
    group.add_argument(
        "--classifier",
        default=SegmenterConfig.classifier,
        choices=CLASSIFIERS,
        help="crop: one CLIP forward per mask (the paper); dense: one per frame (%(default)s)",
    )
    group.add_argument(
        "--mask-threshold", type=float, default=SegmenterConfig.mask_threshold, help="(%(default)s)"
    )
    group.add_argument(
        "--min-proposal-area",
        type=int,
        default=SegmenterConfig.min_proposal_area,
        help="proposals with fewer pixels are dropped before CLIP (%(default)s)",
    )
    group.add_argument(
        "--unlabeled-threshold",
        type=float,
        default=SegmenterConfig.unlabeled_threshold,
        help="pixels scoring below it are left unlabeled (%(default)s)",
    )


def _build(args: argparse.Namespace) -> TwoStageSegmenter:
    """The segmenter the model options describe, with the weight source defaults applied."""
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
    )
    return build_segmenter(
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
    )


def _templates(args: argparse.Namespace) -> list[str]:
    if args.templates:
        return args.templates
    return ["single"] if args.model == TINY_MODEL else ["vild14"]


def _read_rgb(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB; ValueError if it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def run_segment(args: argparse.Namespace) -> int:
    """`ovseg segment`: per image, <stem>_overlay.png, <stem>_labels.png (16-bit class
    indices, 65535 = unlabeled) and <stem>_segments.json in --out."""
    names = parse_class_list(args.vocab)
    segmenter = _build(args)
    vocabulary = VocabularyEncoder(segmenter.clip).encode(names, _templates(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in map(Path, args.images):
        try:
            image = _read_rgb(path)
            segmentation = segmenter.segment(image, vocabulary)
        except ValueError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            failures += 1
            continue
        overlay = render_overlay(image, segmentation, alpha=args.alpha)
        cv2.imwrite(str(out / f"{path.stem}_overlay.png"), overlay[..., ::-1])
        cv2.imwrite(str(out / f"{path.stem}_labels.png"), segmentation.labels)
        summary = {
            "image": str(path),
            "class_names": segmentation.class_names,
            "vocabulary_version": segmentation.vocabulary_version,
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
        (out / f"{path.stem}_segments.json").write_text(json.dumps(summary, indent=2) + "\n")
        found = sorted({s.class_name for s in segmentation.segments})
        total_ms = sum(segmentation.timings_ms.values())
        print(f"{path}: {', '.join(found) or 'nothing'} ({total_ms:.0f} ms)")
    return 1 if failures else 0


def _open_dataset(args: argparse.Namespace) -> ToyWorldDataset | FolderDataset:
    """toy:shape, toy:color, or a dataset folder (datasets.FolderDataset layout)."""
    if args.dataset.startswith("toy:"):
        return ToyWorldDataset(args.dataset.removeprefix("toy:"))
    return FolderDataset(args.dataset, image_dir=args.image_dir, label_dir=args.label_dir)


def run_eval(args: argparse.Namespace) -> int:
    """`ovseg eval`: metrics.json and metrics.md in --out."""
    dataset = _open_dataset(args)
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    segmenter = _build(args)
    templates = _templates(args)
    vocabulary = VocabularyEncoder(segmenter.clip).encode(dataset.class_names, templates)
    progress = ProgressBar(count, f"eval {args.dataset}")
    evaluation = evaluate(
        segmenter,
        vocabulary,
        (dataset[i] for i in range(count)),
        num_classes=len(dataset.class_names),
        ignore_index=dataset.ignore_index,
        unseen_classes=getattr(dataset, "unseen_classes", ()),
        on_image=progress.update,
    )
    settings = {
        "dataset": args.dataset,
        "model": f"{segmenter.clip.name} ({segmenter.clip.source})",
        "device": str(segmenter.clip.device),
        "precision": f"{args.precision} ({segmenter.clip.dtype_name})"
        + (", compiled" if args.compile else ""),
        "classifier": args.classifier,
        "templates": ", ".join(templates),
        "proposals": f"{args.proposals}, at most {args.max_proposals}",
        "mask_threshold": args.mask_threshold,
        "min_proposal_area": args.min_proposal_area,
        "unlabeled_threshold": args.unlabeled_threshold,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": settings,
        "num_images": evaluation.num_images,
        "metrics": evaluation.metrics.to_dict(),
        "mean_timings_ms": evaluation.mean_timings_ms,
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = metrics_markdown(evaluation, f"ovseg eval {args.dataset}", settings)
    (out / "metrics.md").write_text(markdown)
    print(markdown)
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """`ovseg bench`: prints the table and writes bench.json / bench.md."""
    from ovseg_ros import benchmark

    if args.iterations < 1 or args.warmup < 0:
        raise ValueError(
            f"--iterations must be at least 1 and --warmup at least 0, got {args.iterations} "
            f"and {args.warmup}"
        )
    if args.node and args.proposal_generator != "superpixel":
        raise ValueError("--node times the node with its superpixel proposals only")
    width, _, height = args.size.partition("x")
    results = []
    for precision in args.precision:
        for classifier in args.classifier:
            settings = benchmark.BenchSettings(
                model=args.model,
                pretrained=args.pretrained,
                checkpoint=args.checkpoint,
                device=args.device,
                precision=precision,
                width=int(width),
                height=int(height),
                proposals=args.proposals,
                proposal_generator=args.proposal_generator,
                classifier=classifier,
                compile_image_tower=args.compile,
                iterations=args.iterations,
                warmup=args.warmup,
                pipeline=args.pipeline,
            )
            print(f"benchmarking {classifier} / {precision} ...", file=sys.stderr, flush=True)
            results.append(benchmark.run_benchmark(settings))
    node = benchmark.run_node_benchmark(results[0].settings) if args.node else None
    report = benchmark.write_report(results, benchmark.machine_description(), Path(args.out), node)
    print(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovseg", description="Open-vocabulary semantic segmentation (Xu et al., ECCV 2022)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment image files")
    segment.add_argument("images", nargs="+", help="image files")
    segment.add_argument(
        "--vocab", required=True, help='comma-separated classes, "a|b" for synonyms'
    )
    segment.add_argument("--out", default="ovseg-out", help="output folder (%(default)s)")
    segment.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    _add_model_arguments(segment)
    segment.set_defaults(run=run_segment)

    evaluation = commands.add_parser("eval", help="evaluate on a dataset (mIoU)")
    evaluation.add_argument(
        "dataset", help="toy:shape, toy:color, or a folder (classes.txt, images/, labels/)"
    )
    evaluation.add_argument("--limit", type=int, help="evaluate the first N images only")
    evaluation.add_argument("--image-dir", default="images", help="folder dataset: images")
    evaluation.add_argument("--label-dir", default="labels", help="folder dataset: labels")
    evaluation.add_argument("--out", default="ovseg-eval", help="output folder (%(default)s)")
    _add_model_arguments(evaluation)
    evaluation.set_defaults(run=run_eval)

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
    bench.add_argument("--size", default="640x480", help="frame WIDTHxHEIGHT (%(default)s)")
    bench.add_argument("--proposals", type=int, default=100, help="masks per frame (%(default)s)")
    bench.add_argument(
        "--proposal-generator",
        default=DEFAULT_PROPOSAL_GENERATOR,
        choices=proposal_generator_names(),
    )
    bench.add_argument("--classifier", nargs="+", default=list(CLASSIFIERS), choices=CLASSIFIERS)
    bench.add_argument("--iterations", type=int, default=3, help="timed frames (%(default)s)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed frames first (%(default)s)")
    bench.add_argument("--node", action="store_true", help="also time the node over DDS")
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
    """Entry point of the `ovseg` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, WeightsNotFoundError, CheckpointMismatchError, DatasetError) as exc:
        print(f"ovseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
