"""Second training step of the tiny CLIP: teaches its image tower the dense classifier path.

    tools/in_env.sh python tools/train_tiny_clip.py        # step 1: masked crops
    tools/in_env.sh python tools/tune_tiny_clip_dense.py   # step 2: this script

Why: real CLIP's patch tokens carry local semantics, which is what the training-free dense mode
(engine/dense.py) relies on. The tiny CLIP of step 1 only ever saw isolated masked crops, so its
patch tokens carry none, and the dense path gets it wrong (about 10 % toy mIoU). This step gives
the stand-in the property real CLIP has; it does not make the dense path itself trained.

How: self-distillation. The step-1 model, frozen, is the teacher: for every mask of a training
scene its crop embedding (the crop path, crops.masked_crops) is the target of the student's
dense embedding of that mask, computed by the engine's own dense code (DenseFeatureExtractor
.frame_tokens and .share_embeddings) on the whole scene. Masks: each visible shape, a
perturbed copy, the background, a part of it (as in step 1), and real stage-1 proposals
(superpixel grouping) of the scene, mixed regions included, whose only target is the teacher's.
Losses: 1 - cosine to the teacher (dense), the class-name cross-entropy of step 1 on the labeled
masks (dense), and 1 - cosine of the student's own crop embeddings to the teacher's, so the crop
path keeps what step 1 taught it. Only the image tower trains: the text tower, and therefore every
text embedding (and the toy MaskFormer's class space) stay bit-identical.

The tuned tower fits the engine's default DenseConfig (patch grid and masked blocks): classifying
the ground-truth shape masks of 60 held-out scenes, this tune (masked_blocks=4) gets 95.1 % right;
a smaller tune of the same step-1 weights (3000 steps on 3000 scenes, crop term weighted 4) for the
class token masked in the last block only (masked_blocks=1) got 77.1 %.

Deterministic: seeded, 2 threads, deterministic algorithms.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from train_tiny_clip import _background_region, _perturb, warmup_cosine

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.classify import usable_masks
from ovseg_ros.engine.clip_model import TINY_MODEL, ClipModel, default_checkpoint, load_clip
from ovseg_ros.engine.crops import masked_crops, normalize_image
from ovseg_ros.engine.dense import DenseFeatureExtractor, patch_shares
from ovseg_ros.engine.proposals import build_proposal_generator

TRAINING_TAG = "tune_tiny_clip_dense"
"""Written into the output's metadata ("training"); an input carrying it is refused (the
teacher must be the step-1 model)."""

PROPOSALS_PER_SCENE = 24
"""Stage-1 proposals drawn per training scene (besides the labeled masks)."""

CROPS_PER_SCENE = 8
"""Crops per scene and step on which the student's crop path is held to the teacher's."""

KEEP_CROPS_WEIGHT = 8.0
"""Weight of the crop-path term against the dense terms (distillation, class names)."""


@dataclass
class SceneMasks:
    """One training scene with its masks and targets.

    image: (H, W, 3) uint8 RGB; shares: (N, gh, gw) float32, each patch's share inside each mask
    on the dense patch grid of the image; crops: (N, 3, S, S) float16, the masks' normalised
    crops; teacher: (N, D) float32 unit-norm crop embeddings of the frozen step-1
    model; shapes, colors: (N,) int64 class indices (0 = background), -1 for unlabeled proposals.
    """

    image: np.ndarray
    shares: torch.Tensor
    crops: torch.Tensor
    teacher: torch.Tensor
    shapes: torch.Tensor
    colors: torch.Tensor


def scene_masks(
    seed: int, teacher: ClipModel, grid: tuple[int, int], proposals, rng: np.random.Generator
) -> SceneMasks:
    """The masks, crops and teacher targets of the training scene `seed`."""
    scene = toy_world.generate_scene(seed)
    background = scene.instances == 0
    masks, shapes, colors = [], [], []
    for k, (shape, color) in enumerate(zip(scene.shapes, scene.colors, strict=True), start=1):
        visible = scene.instances == k
        for mask in (visible, _perturb(visible, background, rng)):
            masks.append(mask)
            shapes.append(toy_world.SHAPES.index(shape) + 1)
            colors.append(toy_world.COLORS.index(color) + 1)
    for region in (background, _background_region(background, rng)):
        if region.sum() >= 64:
            masks.append(region)
            shapes.append(0)
            colors.append(0)
    found, _ = usable_masks(proposals(scene.image).masks, 0.5)
    for index in rng.permutation(len(found))[:PROPOSALS_PER_SCENE]:
        masks.append(found[index].numpy())
        shapes.append(-1)
        colors.append(-1)
    binary = torch.from_numpy(np.stack(masks))
    image = normalize_image(scene.image, teacher.mean, teacher.std)
    crops = masked_crops(image, binary, teacher.image_size)
    return SceneMasks(
        image=scene.image,
        shares=patch_shares(binary, grid),
        crops=crops.half(),
        teacher=teacher.encode_images(crops).clone(),
        shapes=torch.tensor(shapes),
        colors=torch.tensor(colors),
    )


def dense_embeddings(
    extractor: DenseFeatureExtractor, image: np.ndarray, shares: torch.Tensor
) -> torch.Tensor:
    """The dense path of engine/dense.py with gradients: image (H, W, 3) uint8, shares
    (N, gh, gw) on its patch grid -> (N, D) unit-norm embeddings."""
    tokens, grid = extractor.frame_tokens(image)
    if tuple(shares.shape[1:]) != grid:
        raise ValueError(f"shares on a {tuple(shares.shape[1:])} grid, the frame's is {grid}")
    return extractor.share_embeddings(tokens, shares)


def augment(scene: SceneMasks, rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
    """A random flip and quarter turn of the scene's image and patch shares (every name is
    invariant to them; the grid's cells are whole pixel blocks, so they turn exactly)."""
    image, shares = torch.from_numpy(scene.image), scene.shares
    if rng.random() < 0.5:
        image, shares = image.flip(1), shares.flip(-1)
    turns = int(rng.integers(4))
    image = torch.rot90(image, turns, dims=(0, 1))
    shares = torch.rot90(shares, turns, dims=(-2, -1))
    return image.contiguous().numpy(), shares


def vocabulary_embeddings(clip: ClipModel) -> dict[str, torch.Tensor]:
    """Per label space, (T, C, D) text embeddings of its class names under each training
    template (fixed: the text tower does not train)."""
    out = {}
    spaces = (("shape", toy_world.shape_classes()), ("color", toy_world.color_classes()))
    for space, names in spaces:
        rows = [clip.encode_texts([t.format(n) for n in names]) for t in toy_world.TRAIN_TEMPLATES]
        out[space] = torch.stack(rows).clone()
    return out


def tune(
    student: ClipModel,
    scenes: list[SceneMasks],
    text: dict[str, torch.Tensor],
    steps: int,
    batch: int,
    lr: float,
    seed: int,
) -> None:
    """Trains student.model.visual in place for `steps` steps of `batch` scenes."""
    rng = np.random.default_rng(seed)
    visual = student.model.visual
    for parameter in student.model.parameters():
        parameter.requires_grad_(False)
    for parameter in visual.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(visual.parameters(), lr=lr, weight_decay=0.05)
    schedule = warmup_cosine(optimizer, steps)
    extractor = DenseFeatureExtractor(student)
    scale = student.model.logit_scale.exp().clamp(max=100).detach()
    started = time.time()
    for step in range(steps):
        template = int(rng.integers(len(toy_world.TRAIN_TEMPLATES)))
        distill_terms, classify_terms, crops, crop_targets = [], [], [], []
        for index in rng.choice(len(scenes), batch, replace=False):
            scene = scenes[int(index)]
            image, shares = augment(scene, rng)
            dense = dense_embeddings(extractor, image, shares)
            distill_terms.append(1 - (dense * scene.teacher).sum(-1))
            labeled = scene.shapes >= 0
            for space, labels in (("shape", scene.shapes), ("color", scene.colors)):
                logits = scale * dense[labeled] @ text[space][template].T
                classify_terms.append(F.cross_entropy(logits, labels[labeled], reduction="none"))
            count = min(CROPS_PER_SCENE, len(scene.crops))
            pick = torch.from_numpy(rng.choice(len(scene.crops), count, replace=False))
            crops.append(scene.crops[pick].float())
            crop_targets.append(scene.teacher[pick])
        distill = torch.cat(distill_terms).mean()
        classify = torch.cat(classify_terms).mean()
        crop_embeddings = F.normalize(student.model.encode_image(torch.cat(crops)), dim=-1)
        keep_crops = (1 - (crop_embeddings * torch.cat(crop_targets)).sum(-1)).mean()
        loss = distill + classify + KEEP_CROPS_WEIGHT * keep_crops
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            print(
                f"step {step:5d}/{steps}  loss {loss.item():.3f}  distill {distill.item():.3f}  "
                f"classify {classify.item():.3f}  keep_crops {keep_crops.item():.4f}  "
                f"{time.time() - started:.0f} s",
                flush=True,
            )
    for parameter in student.model.parameters():
        parameter.requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=6000, help="training scenes")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=12, help="scenes per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, default=default_checkpoint(), help="step-1 weights")
    parser.add_argument("--output", type=Path, default=default_checkpoint())
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()

    with safe_open(str(args.init), "pt") as weights:
        if (weights.metadata() or {}).get("training") == TRAINING_TAG:
            raise SystemExit(
                f"{args.init} was already tuned by this script; start from the weights "
                "tools/train_tiny_clip.py writes"
            )
    started = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    teacher = load_clip(TINY_MODEL, checkpoint=args.init, device="cpu", precision="fp32")
    student = load_clip(TINY_MODEL, checkpoint=args.init, device="cpu", precision="fp32")
    proposals = build_proposal_generator("superpixel")
    rng = np.random.default_rng(args.seed)
    seeds = range(toy_world.TRAIN_SEEDS.start, toy_world.TRAIN_SEEDS.start + args.scenes)
    first = toy_world.generate_scene(seeds[0]).image
    grid = DenseFeatureExtractor(teacher).frame_tokens(first)[1]
    scenes = [scene_masks(seed, teacher, grid, proposals, rng) for seed in seeds]
    print(f"{sum(len(s.shares) for s in scenes)} masks from {args.scenes} scenes, "
          f"{time.time() - started:.0f} s", flush=True)  # fmt: skip

    text = vocabulary_embeddings(teacher)
    tune(student, scenes, text, args.steps, args.batch, args.lr, args.seed)

    state = {k: v.detach().half().contiguous() for k, v in student.model.state_dict().items()}
    save_file(state, str(args.output), metadata={"model": TINY_MODEL, "training": TRAINING_TAG})
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB), "
          f"total {time.time() - started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
