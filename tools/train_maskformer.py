#!/usr/bin/env python3
"""Trains the proposal network (MaskFormer with a CLIP text-space class head) on seen classes.

Two data sources:
  toy     the toy world's shape label space; the unseen shapes (toy_world.UNSEEN_SHAPES) are
          ignored (255), like the paper's zero-shot training on seen classes only.
  folder  the converted layout read by datasets.FolderDataset (e.g. COCO-Stuff-164k as
          detectron2 prepares it: --image-dir train2017 --label-dir
          stuffthingmaps_detectron2/train2017 with a classes.txt of the 171 names); pixels of the
          --unseen classes (default: the reference's 15 COCO-Stuff novel classes) are ignored.

The class head is trained against the CLIP text embeddings of the seen classes (prompt templates
--templates) plus the learned non-object embedding. Writes the project's safetensors format
(checkpoint.save_maskformer) every --save-every steps and at the end, with the optimizer state
beside it (OUTPUT.train-state.pt) so --resume continues where it stopped.

The committed fixture models/ovseg-toy-maskformer.safetensors was made with (about 10 to 20
minutes on 2 shared CPU cores; retrain it whenever the tiny CLIP changes):
  tools/in_env.sh python tools/train_maskformer.py --dataset toy --exclude-ignored --threads 1 \
      --clip-checkpoint models/ovseg-tiny-clip.safetensors \
      --output models/ovseg-toy-maskformer.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.clip_model import (
    TINY_MODEL,
    check_state_dict,
    load_clip,
    read_state_dict,
    text_tower_digest,
)
from ovseg_ros.engine.datasets import FolderDataset
from ovseg_ros.engine.maskformer.backbone import RESNET_CONFIGS, ResNetConfig
from ovseg_ros.engine.maskformer.checkpoint import (
    load_maskformer,
    map_torchvision_resnet_keys,
    save_maskformer,
)
from ovseg_ros.engine.maskformer.criterion import SetCriterion, semantic_targets
from ovseg_ros.engine.maskformer.model import MaskFormer, MaskFormerConfig
from ovseg_ros.engine.metrics import IGNORE_INDEX
from ovseg_ros.engine.vocabulary import VocabularyEncoder

COCO_STUFF_NOVEL = (
    "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
    "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete",
)  # fmt: skip
"""The 15 unseen classes of the reference's COCO-Stuff 156/15 split."""


def preset_config(name: str, embedding_dim: int, num_queries: int | None) -> MaskFormerConfig:
    """The toy preset, a small network for the toy world (basic-block ResNet, 16 queries, 3
    layers), or "R50" / "R101c", the reference's (100 queries); num_queries overrides."""
    if name == "toy":
        backbone = ResNetConfig(
            blocks_per_stage=(1, 1, 1, 1),
            block="basic",
            stem_channels=32,
            res2_channels=32,
            res5_multi_grid=(1,),
            norm="bn",
        )
        return MaskFormerConfig(
            backbone=backbone,
            conv_dim=64,
            mask_dim=64,
            hidden_dim=64,
            num_queries=num_queries or 16,
            num_layers=3,
            heads=4,
            feedforward_dim=256,
            dropout=0.0,
            embedding_dim=embedding_dim,
            embed_hidden_dim=128,
        )
    backbone = RESNET_CONFIGS[name]
    return MaskFormerConfig(
        backbone=backbone, embedding_dim=embedding_dim, num_queries=num_queries or 100
    )


class ToySource:
    """A pool of toy-world training scenes, resized to (height, width); seen shapes only."""

    def __init__(self, num_scenes: int, height: int, width: int):
        classes = toy_world.shape_classes()
        self.class_names = [c for c in classes if c not in toy_world.UNSEEN_SHAPES]
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for index, name in enumerate(classes):
            if name in self.class_names:
                lut[index] = self.class_names.index(name)
        self.images = np.zeros((num_scenes, height, width, 3), np.uint8)
        self.labels = np.zeros((num_scenes, height, width), np.uint8)
        for i in tqdm(range(num_scenes), desc="toy scenes", leave=False):
            scene = toy_world.generate_scene(toy_world.TRAIN_SEEDS.start + i)
            self.images[i] = cv2.resize(scene.image, (width, height), interpolation=cv2.INTER_AREA)
            small = cv2.resize(scene.shape_labels, (width, height), interpolation=cv2.INTER_NEAREST)
            self.labels[i] = lut[small]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        index = int(rng.integers(len(self.images)))
        image, label = self.images[index], self.labels[index]
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return image, label


class FolderSource:
    """Random scale (0.5-2 x crop), crop and flip of a FolderDataset; unseen classes ignored."""

    def __init__(self, dataset: FolderDataset, unseen: list[str], height: int, width: int):
        self.dataset = dataset
        missing = sorted(set(unseen) - set(dataset.class_names))
        if missing:
            raise SystemExit(f"--unseen names not among the dataset's classes: {missing}")
        self.class_names = [c for c in dataset.class_names if c not in unseen]
        self.lut = np.full(65536, IGNORE_INDEX, dtype=np.int64)
        for index, name in enumerate(dataset.class_names):
            if name in self.class_names:
                self.lut[index] = self.class_names.index(name)
        self.height, self.width = height, width

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        sample = self.dataset[int(rng.integers(len(self.dataset)))]
        scale = rng.uniform(0.5, 2.0) * min(self.height, self.width) / min(sample.label.shape)
        size = (
            max(1, round(sample.label.shape[1] * scale)),
            max(1, round(sample.label.shape[0] * scale)),
        )
        image = cv2.resize(sample.image, size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(
            self.lut[sample.label].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST
        )
        pad_h, pad_w = max(0, self.height - size[1]), max(0, self.width - size[0])
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
        top = int(rng.integers(label.shape[0] - self.height + 1))
        left = int(rng.integers(label.shape[1] - self.width + 1))
        image = image[top : top + self.height, left : left + self.width]
        label = label[top : top + self.height, left : left + self.width]
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return image, label


def make_batch(
    source,
    rng: np.random.Generator,
    batch_size: int,
    model: MaskFormer,
    device: torch.device,
    exclude_ignored: bool,
):
    """(images (B, 3, H', W') normalised and padded, targets) for one step."""
    pairs = [source.sample(rng) for _ in range(batch_size)]
    images = torch.from_numpy(np.stack([np.ascontiguousarray(p[0]) for p in pairs]))
    images = model.normalize(images.permute(0, 3, 1, 2).float().to(device))
    targets = []
    for _, label in pairs:
        padded = np.full(images.shape[-2:], IGNORE_INDEX, dtype=np.int64)
        padded[: label.shape[0], : label.shape[1]] = label
        target = semantic_targets(
            torch.from_numpy(padded), len(source.class_names), exclude_ignored=exclude_ignored
        )
        target.masks = target.masks.to(device)
        target.labels = target.labels.to(device)
        if target.valid is not None:
            target.valid = target.valid.to(device)
        targets.append(target)
    return images, targets


def initialise(model: MaskFormer, path: Path) -> None:
    """Loads a torchvision ResNet into the backbone, or a whole MaskFormer checkpoint."""
    state = read_state_dict(path)
    if any(key.startswith("layer1.") for key in state):
        backbone_state = map_torchvision_resnet_keys(state)
        for key, value in model.backbone.state_dict().items():
            if key.endswith("num_batches_tracked"):
                backbone_state.setdefault(key, value)
        check_state_dict(model.backbone, backbone_state, str(path))
        model.backbone.load_state_dict(backbone_state)
    else:
        model.load_state_dict(load_maskformer(path).model.state_dict())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dataset", choices=("toy", "folder"), default="toy")
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--image-dir", default="images")
    parser.add_argument("--label-dir", default="labels")
    parser.add_argument("--class-file", default="classes.txt")
    parser.add_argument("--unseen", default=",".join(COCO_STUFF_NOVEL), help="folder: comma list")
    parser.add_argument("--toy-scenes", type=int, default=2000, help="toy: training scene pool")
    parser.add_argument("--preset", choices=("toy", "R50", "R101c"), default="toy")
    parser.add_argument("--num-queries", type=int, help="default: the preset's")
    parser.add_argument("--image-size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
    parser.add_argument("--clip-model", default=TINY_MODEL)
    parser.add_argument("--clip-checkpoint", type=Path)
    parser.add_argument("--clip-pretrained")
    parser.add_argument("--templates", default="single")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--backbone-lr-multiplier", type=float, default=1.0)
    parser.add_argument("--clip-grad", type=float, default=0.01, help="full-model grad norm")
    parser.add_argument("--mask-loss", choices=("focal", "bce"), default="focal")
    parser.add_argument("--no-deep-supervision", action="store_true")
    parser.add_argument(
        "--exclude-ignored",
        action="store_true",
        help="leave ignored (e.g. unseen-class) pixels out of the mask losses; the reference "
        "instead trains every mask to 0 there",
    )
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--init",
        type=Path,
        help="start from these weights: a torchvision ResNet state dict (ImageNet backbone, e.g. "
        "resnet50 for --preset R50) or a MaskFormer checkpoint of the same architecture",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    height, width = args.image_size
    device = torch.device(args.device)

    clip = load_clip(
        args.clip_model,
        pretrained=args.clip_pretrained,
        checkpoint=args.clip_checkpoint,
        device=args.device,
        precision="fp32",
    )
    if args.dataset == "toy":
        source = ToySource(args.toy_scenes, height, width)
    else:
        if args.data_root is None:
            raise SystemExit("--dataset folder needs --data-root")
        dataset = FolderDataset(args.data_root, args.image_dir, args.label_dir, args.class_file)
        unseen = [n.strip() for n in args.unseen.split(",") if n.strip()]
        source = FolderSource(dataset, unseen, height, width)
    vocabulary = VocabularyEncoder(clip).encode(source.class_names, args.templates)
    clip_source = args.clip_pretrained or text_tower_digest(read_state_dict(args.clip_checkpoint))
    text_embeddings = vocabulary.text_embeddings.to(device)

    state_path = args.output.with_suffix(".train-state.pt")
    if args.resume:
        model = load_maskformer(args.output).model
        if model.config.embedding_dim != clip.embed_dim:
            raise SystemExit("the checkpoint's text space does not match the CLIP model")
    else:
        model = MaskFormer(preset_config(args.preset, clip.embed_dim, args.num_queries))
        if args.init:
            initialise(model, args.init)
    model.to(device).train()

    backbone_params = list(model.backbone.parameters())
    backbone_ids = {id(p) for p in backbone_params}
    other_params = [p for p in model.parameters() if id(p) not in backbone_ids]
    optimizer = torch.optim.AdamW(
        [
            {"params": backbone_params, "lr": args.lr * args.backbone_lr_multiplier},
            {"params": other_params, "lr": args.lr},
        ],
        weight_decay=args.weight_decay,
    )
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    start = 0
    if args.resume:
        state = torch.load(state_path, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        rng = np.random.default_rng([args.seed, start])
    criterion = SetCriterion(
        mask_loss=args.mask_loss, deep_supervision=not args.no_deep_supervision
    )

    def save(step: int) -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        save_maskformer(
            args.output,
            model,
            trained_classes=source.class_names,
            image_size=(height, width),
            extra_metadata={
                "templates": json.dumps(list(vocabulary.templates)),
                "clip_model": args.clip_model,
                "clip_source": clip_source,
                "steps": str(step),
                "exclude_ignored": str(args.exclude_ignored),
            },
        )
        torch.save({"optimizer": optimizer.state_dict(), "step": step}, state_path)

    started = time.time()
    progress = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train")
    for step in progress:
        factor = (1 - step / args.steps) ** 0.9
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * factor
        images, targets = make_batch(
            source, rng, args.batch_size, model, device, args.exclude_ignored
        )
        output = model(images)
        class_logits = model.class_logits(output.query_embeddings, text_embeddings)
        losses = criterion(output.mask_logits, class_logits, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        optimizer.step()
        progress.set_postfix(
            loss=f"{loss.item():.3f}",
            ce=f"{losses['loss_ce'].item():.3f}",
            mask=f"{losses['loss_mask'].item():.3f}",
            dice=f"{losses['loss_dice'].item():.3f}",
        )
        if (step + 1) % args.save_every == 0:
            save(step + 1)
    save(args.steps)
    print(
        f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB) "
        f"after {time.time() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
