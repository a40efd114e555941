#!/usr/bin/env python3
"""Toy-world zero-shot comparison: the proposal network alone, CLIP on masked crops, and their
ensemble (one row per lambda), as seen / unseen mIoU and hIoU on held-out scenes.

  tools/in_env.sh python tools/eval_maskformer_toy.py \
      --checkpoint models/ovseg-toy-maskformer.safetensors \
      --clip-checkpoint models/ovseg-tiny-clip.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.clip_model import TINY_MODEL, load_clip
from ovseg_ros.engine.datasets import ToyWorldDataset
from ovseg_ros.engine.maskformer.checkpoint import read_metadata
from ovseg_ros.engine.maskformer.zero_shot import compare_classifiers
from ovseg_ros.engine.proposals.maskformer import MaskFormerProposalGenerator
from ovseg_ros.engine.vocabulary import VocabularyEncoder


def percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--clip-checkpoint", type=Path, required=True)
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument(
        "--first-seed",
        type=int,
        default=toy_world.EVAL_SEEDS.start,
        help="scenes first-seed.. (default: the held-out evaluation seeds; a training seed beyond "
        "the training pool gives a validation set for choosing settings)",
    )
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.8])
    parser.add_argument("--mask-threshold", type=float, default=0.5)
    parser.add_argument("--templates", help="default: those the network was trained with")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    clip = load_clip(TINY_MODEL, checkpoint=args.clip_checkpoint, device="cpu")
    generator = MaskFormerProposalGenerator(args.checkpoint, device="cpu", clip=clip)
    templates = args.templates or json.loads(
        read_metadata(args.checkpoint).get("templates", '["a photo of a {}."]')
    )
    dataset = ToyWorldDataset(
        "shape",
        seeds=range(args.first_seed, args.first_seed + args.num_images),
    )
    vocabulary = VocabularyEncoder(clip).encode(dataset.class_names, templates)
    result = compare_classifiers(
        clip, generator, vocabulary, dataset, args.lambdas, args.mask_threshold
    )
    rows = [("network only", result.network_only), ("CLIP crops only", result.clip_only)]
    rows += [(f"ensemble, lambda {w}", m) for w, m in result.ensemble.items()]
    unseen = ", ".join(dataset.unseen_classes)
    print(f"toy world, shape classes, {args.num_images} scenes from seed {args.first_seed}")
    print(f"unseen: {unseen}")
    print("| classifier | mIoU | seen mIoU | unseen mIoU | hIoU |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, m in rows:
        figures = [m.miou, m.seen_miou, m.unseen_miou, m.hiou]
        print(f"| {name} | " + " | ".join(percent(v) for v in figures) + " |")
    if args.json:
        args.json.write_text(json.dumps({name: m.to_dict() for name, m in rows}, indent=2))


if __name__ == "__main__":
    main()
