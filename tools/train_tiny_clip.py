"""Trains the project's tiny CLIP on the toy world and writes models/ovseg-tiny-clip.safetensors.

    tools/in_env.sh python tools/train_tiny_clip.py                        # both towers
    tools/in_env.sh python tools/train_tiny_clip.py --text-from FILE       # image tower only

The committed file was made by step 1 with the text side of the file before it
(`--text-from models/ovseg-tiny-clip.safetensors --output step1.safetensors`), then step 2
(`tools/tune_tiny_clip_dense.py --init step1.safetensors`). Keeping the text side keeps every
text embedding, and so the toy MaskFormer's class space, bit-identical.

Architecture: open_clip's own CLIP classes with the registered config `ovseg-tiny-clip`
(ovseg_ros/engine/model_configs/), open_clip's real tokenizer. Data: masked crops of toy-world
training scenes, made by the engine's own stage-2 crop function (`crops.masked_crops`), so the
model sees at training time exactly what the segmenter shows it: per shape the visible mask and
a perturbed copy (eroded, dilated, cut, or merged with some background), per scene the whole
background and a random part of it.
Captions come from varied templates (toy_world.TRAIN_TEMPLATES, TRAIN_PAIR_TEMPLATES) filled with
a shape name, a color name, both, or "background"; toy_world.HELD_OUT_TEMPLATES are never used.
Augmentation: flips, quarter turns, and in half of the crops a zoom-out (the crop shrunk to 30 to
100 % and placed at a random position on a blank canvas), so that, like a real CLIP, the model
knows a shape at other scales than filling its input: without it, crops shrunk to 75 % got 16.6 %
of held-out shapes right against 97.1 % unshrunk, and the dense path, which sees every shape
at the scale it has in the frame, could not be taught.
Loss: CLIP's contrastive loss with soft targets (every caption in the batch that describes a crop
is a positive for it), plus cross-entropy of each crop against the class names of the shape
label space and of the color label space, both under one randomly drawn training template.

Deterministic: seeded numpy and torch, 2 threads, deterministic algorithms; the same machine
gives the same file. At the end the checkpoint is read back through `load_clip` (the engine's
loader, fp16 file into the fp32 model) and its zero-shot accuracy on held-out scenes is printed.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.clip_model import ClipModel, check_state_dict, load_clip, read_state_dict
from ovseg_ros.engine.crops import masked_crops, normalize_image

MODEL_NAME = "ovseg-tiny-clip"
OUTPUT = Path(__file__).resolve().parents[1] / "models" / f"{MODEL_NAME}.safetensors"

NOISE_TOKEN_PROB = 0.25
"""Probability that a caption gets 1 or 2 random vocabulary tokens inserted (robustness to
words the model never learned, such as those of unseen templates)."""


@dataclass
class Crops:
    """Masked crops with their classes.

    images: (N, 3, S, S) float16, CLIP-normalised; shapes, colors: (N,) int64 class indices into
    shape_classes() / color_classes() (0 = background for both).
    """

    images: torch.Tensor
    shapes: torch.Tensor
    colors: torch.Tensor


def _perturb(mask: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An imperfect proposal for a visible shape mask: eroded, dilated, cut or merged with some
    background. mask, background: (H, W) bool -> (H, W) bool, never empty."""
    kind = rng.integers(4)
    if kind == 0:
        size = int(rng.choice([3, 5]))
        out = cv2.erode(mask.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)
    elif kind == 1:
        size = int(rng.choice([3, 5, 7, 9]))
        out = cv2.dilate(mask.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)
    elif kind == 2:
        ys, xs = np.nonzero(mask)
        angle = rng.uniform(0, 2 * np.pi)
        along = xs * np.cos(angle) + ys * np.sin(angle)
        cut = np.quantile(along, rng.uniform(0.1, 0.4))
        out = np.zeros_like(mask)
        out[ys[along >= cut], xs[along >= cut]] = True
    else:
        ys, xs = np.nonzero(mask)
        height, width = mask.shape
        y, x = int(rng.choice(ys)), int(rng.choice(xs))
        half_h = int((ys.max() - ys.min() + 1) * rng.uniform(0.2, 0.5))
        half_w = int((xs.max() - xs.min() + 1) * rng.uniform(0.2, 0.5))
        extra = np.zeros_like(mask)
        extra[max(y - half_h, 0) : y + half_h + 1, max(x - half_w, 0) : x + half_w + 1] = True
        out = mask | (extra & background)
    return out if out.sum() >= 0.3 * mask.sum() else mask


def _background_region(background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A part of the background: a random rectangle or ellipse minus the shapes, (H, W) bool,
    maybe empty."""
    height, width = background.shape
    region = np.zeros((height, width), np.uint8)
    h, w = int(height * rng.uniform(0.2, 1.0)), int(width * rng.uniform(0.2, 1.0))
    y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    if rng.random() < 0.5:
        region[y : y + h, x : x + w] = 1
    else:
        cv2.ellipse(region, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, 1, -1)
    return region.astype(bool) & background


def make_crops(
    seeds: range, model_size: tuple[int, int], mean, std, train: bool, seed: int = 0
) -> Crops:
    """Crops of the toy scenes of `seeds`. train=True adds perturbed shape masks and background
    parts; train=False gives exactly one crop per visible shape (its visible mask) and one of the
    whole background per scene."""
    rng = np.random.default_rng(seed)
    images, shapes, colors = [], [], []
    for scene_seed in seeds:
        scene = toy_world.generate_scene(scene_seed)
        background = scene.instances == 0
        masks, shape_ids, color_ids = [], [], []
        for k, (shape, color) in enumerate(zip(scene.shapes, scene.colors, strict=True), start=1):
            visible = scene.instances == k
            variants = [visible, _perturb(visible, background, rng)] if train else [visible]
            for mask in variants:
                masks.append(mask)
                shape_ids.append(toy_world.SHAPES.index(shape) + 1)
                color_ids.append(toy_world.COLORS.index(color) + 1)
        regions = [background]
        if train:
            regions.append(_background_region(background, rng))
        for region in regions:
            if region.sum() >= 64:
                masks.append(region)
                shape_ids.append(0)
                color_ids.append(0)
        image = normalize_image(scene.image, mean, std)
        images.append(masked_crops(image, torch.from_numpy(np.stack(masks)), model_size).half())
        shapes.extend(shape_ids)
        colors.extend(color_ids)
    return Crops(torch.cat(images), torch.tensor(shapes), torch.tensor(colors))


class Captioner:
    """Draws captions for crops and tokenizes them with open_clip's tokenizer."""

    def __init__(self, tokenizer: open_clip.SimpleTokenizer, rng: np.random.Generator):
        self.tokenizer = tokenizer
        self.rng = rng
        self.cache: dict[str, list[int]] = {}
        names = [toy_world.BACKGROUND, *toy_world.SHAPES, *toy_world.COLORS]
        self.protected = {i for n in names for i in tokenizer.encode(n)}

    def caption(self, shape: int, color: int) -> tuple[str, int, int]:
        """A caption for a crop of class indices (shape, color); returns the caption and the
        classes it names (0 = not named; (0, 0) for background captions)."""
        template = toy_world.TRAIN_TEMPLATES[self.rng.integers(len(toy_world.TRAIN_TEMPLATES))]
        if shape == 0:
            return template.format(toy_world.BACKGROUND), 0, 0
        shape_name = toy_world.SHAPES[shape - 1]
        color_name = toy_world.COLORS[color - 1]
        choice = self.rng.random()
        if choice < 0.35:
            return template.format(shape_name), shape, 0
        if choice < 0.7:
            return template.format(color_name), 0, color
        if choice < 0.9:
            return template.format(f"{color_name} {shape_name}"), shape, color
        pair = toy_world.TRAIN_PAIR_TEMPLATES[
            self.rng.integers(len(toy_world.TRAIN_PAIR_TEMPLATES))
        ]
        return pair.format(shape=shape_name, color=color_name), shape, color

    def tokens(self, captions: list[str], noise: bool) -> torch.Tensor:
        """captions -> (B, context_length) int64, as tokenizer(captions) gives, plus optional
        random vocabulary tokens inserted in some captions."""
        length = self.tokenizer.context_length
        rows = torch.zeros((len(captions), length), dtype=torch.long)
        for row, caption in zip(rows, captions, strict=True):
            if caption not in self.cache:
                self.cache[caption] = self.tokenizer.encode(caption)
            ids = list(self.cache[caption])
            if noise and self.rng.random() < NOISE_TOKEN_PROB:
                for _ in range(int(self.rng.integers(1, 3))):
                    token = int(self.rng.integers(256, self.tokenizer.sot_token_id))
                    if token not in self.protected:
                        ids.insert(int(self.rng.integers(len(ids) + 1)), token)
            ids = [self.tokenizer.sot_token_id, *ids[: length - 2], self.tokenizer.eot_token_id]
            row[: len(ids)] = torch.tensor(ids)
        return rows


ZOOM_PROB = 0.5
"""Share of training crops that are zoomed out."""
ZOOM_RANGE = (0.3, 1.0)
"""Range of the zoom-out factor (side of the shrunk crop over the input side)."""


def zoom_out(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """image: (3, S, S) -> (3, S, S), shrunk by a factor in ZOOM_RANGE and placed at a random
    position on a zero (CLIP-mean) canvas."""
    size = image.shape[-1]
    small = round(size * rng.uniform(*ZOOM_RANGE))
    if small >= size:
        return image
    shrunk = F.interpolate(image[None], (small, small), mode="bilinear", antialias=True)[0]
    y, x = (int(v) for v in rng.integers(0, size - small + 1, 2))
    canvas = torch.zeros_like(image)
    canvas[:, y : y + small, x : x + small] = shrunk
    return canvas


def augment(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random flips, quarter turns (every shape name is invariant to them) and zoom-outs."""
    out = []
    for image in images:
        if rng.random() < 0.5:
            image = image.flip(-1)
        image = torch.rot90(image, int(rng.integers(4)), dims=(-2, -1))
        if rng.random() < ZOOM_PROB:
            image = zoom_out(image, rng)
        out.append(image)
    return torch.stack(out)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate: linear warm-up over the first 5 % of `steps`, then a cosine decay to 0."""
    warmup = max(steps // 20, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(steps - warmup, 1)))
        ),
    )


def train(
    model: open_clip.CLIP, crops: Crops, tokenizer, steps: int, batch: int, seed: int
) -> None:
    """Trains `model` in place on `crops` for `steps` steps of `batch` crops."""
    rng = np.random.default_rng(seed)
    captioner = Captioner(tokenizer, rng)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in trained if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.98),
    )
    schedule = warmup_cosine(optimizer, steps)
    names = {
        "shape": toy_world.shape_classes(),
        "color": toy_world.color_classes(),
    }
    model.train()
    started = time.time()
    for step in range(steps):
        index = torch.from_numpy(rng.choice(len(crops.shapes), batch, replace=False))
        images = augment(crops.images[index].float(), rng)
        shapes, colors = crops.shapes[index], crops.colors[index]
        drawn = [captioner.caption(int(s), int(c)) for s, c in zip(shapes, colors, strict=True)]
        text_shapes = torch.tensor([d[1] for d in drawn])
        text_colors = torch.tensor([d[2] for d in drawn])
        is_background = shapes == 0
        text_background = (text_shapes == 0) & (text_colors == 0)
        # matches[i, j]: caption j describes crop i.
        matches = torch.where(
            is_background[:, None],
            text_background[None, :],
            ~text_background[None, :]
            & ((text_shapes[None, :] == 0) | (text_shapes[None, :] == shapes[:, None]))
            & ((text_colors[None, :] == 0) | (text_colors[None, :] == colors[:, None])),
        ).float()

        template = toy_world.TRAIN_TEMPLATES[rng.integers(len(toy_world.TRAIN_TEMPLATES))]
        vocab = [template.format(n) for n in names["shape"] + names["color"]]
        tokens = captioner.tokens([d[0] for d in drawn], noise=True)
        tokens = torch.cat([tokens, captioner.tokens(vocab, noise=False)])

        image_emb = F.normalize(model.encode_image(images), dim=-1)
        text_emb = F.normalize(model.encode_text(tokens), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * image_emb @ text_emb[:batch].T
        loss_i2t = -(matches / matches.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1)
        loss_t2i = -(matches / matches.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0)
        contrastive = (loss_i2t.mean() + loss_t2i.mean()) / 2
        n_shape = len(names["shape"])
        vocab_logits = scale * image_emb @ text_emb[batch:].T
        classify = (
            F.cross_entropy(vocab_logits[:, :n_shape], shapes)
            + F.cross_entropy(vocab_logits[:, n_shape:], colors)
        ) / 2
        loss = contrastive + classify

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == steps - 1:
            print(
                f"step {step:5d}/{steps}  loss {loss.item():.3f}  contrastive "
                f"{contrastive.item():.3f}  classify {classify.item():.3f}  "
                f"{time.time() - started:.0f} s",
                flush=True,
            )


def class_embeddings(clip: ClipModel, names: list[str], templates: tuple[str, ...]):
    """Prompt-ensembled text embeddings: (C, D) float32, unit norm."""
    rows = []
    for name in names:
        emb = clip.encode_texts([t.format(name) for t in templates])
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


def zero_shot_accuracy(
    clip: ClipModel, crops: Crops, label_space: str, templates: tuple[str, ...]
) -> tuple[float, float]:
    """Accuracy on the shape crops and on the background crops of `crops`, classified among
    the names of `label_space` ("shape" or "color"; "background" included) with `templates`."""
    names = toy_world.shape_classes() if label_space == "shape" else toy_world.color_classes()
    labels = crops.shapes if label_space == "shape" else crops.colors
    text = class_embeddings(clip, names, templates)
    predicted = (clip.encode_images(crops.images.float()) @ text.T).argmax(1)
    correct = predicted == labels
    shape_crops = labels != 0
    return correct[shape_crops].float().mean().item(), correct[~shape_crops].float().mean().item()


def freeze_text_side(model: open_clip.CLIP, checkpoint: Path) -> None:
    """Copies every tensor outside `visual.` from `checkpoint` into `model` and freezes them;
    raises CheckpointMismatchError (clip_model.check_state_dict) if the checkpoint's text side
    lacks a tensor, holds an unknown one or one of another shape."""
    state = {k: v for k, v in model.state_dict().items() if k.startswith("visual.")}
    state |= {k: v for k, v in read_state_dict(checkpoint).items() if not k.startswith("visual.")}
    check_state_dict(model, state, str(checkpoint))
    model.load_state_dict(state)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("visual."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=3000, help="training scenes")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--eval-scenes", type=int, default=300, help="held-out scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--text-from",
        type=Path,
        help="train the image tower only, with the text side (every tensor outside visual.) "
        "copied from this checkpoint and frozen",
    )
    args = parser.parse_args()

    started = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    model = open_clip.create_model(MODEL_NAME, pretrained=None, device="cpu")
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    if args.text_from is not None:
        freeze_text_side(model, args.text_from)
    size = tuple(model.visual.image_size)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    train_seeds = range(toy_world.TRAIN_SEEDS.start, toy_world.TRAIN_SEEDS.start + args.scenes)
    crops = make_crops(train_seeds, size, mean, std, train=True, seed=args.seed)
    print(f"{len(crops.shapes)} training crops from {args.scenes} scenes, "
          f"{time.time() - started:.0f} s", flush=True)  # fmt: skip

    train(model, crops, tokenizer, args.steps, args.batch, args.seed)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.output), metadata={"model": MODEL_NAME})
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB)")

    clip = load_clip(MODEL_NAME, checkpoint=args.output, device="cpu")
    eval_seeds = range(toy_world.EVAL_SEEDS.start, toy_world.EVAL_SEEDS.start + args.eval_scenes)
    held_out = make_crops(eval_seeds, clip.image_size, clip.mean, clip.std, train=False)
    n_shapes = int((held_out.shapes != 0).sum())
    print(f"zero-shot on {n_shapes} shape crops and {len(held_out.shapes) - n_shapes} "
          f"background crops of {args.eval_scenes} held-out scenes:")  # fmt: skip
    for title, templates in (
        ('"a photo of a {}."', ("a photo of a {}.",)),
        ("held-out templates (ensemble)", toy_world.HELD_OUT_TEMPLATES),
        *((f'held-out "{t}"', (t,)) for t in toy_world.HELD_OUT_TEMPLATES),
    ):
        for space in ("shape", "color"):
            shape_acc, background_acc = zero_shot_accuracy(clip, held_out, space, templates)
            print(
                f"  {title:40s} {space}: {100 * shape_acc:5.1f}%  "
                f"background: {100 * background_acc:5.1f}%"
            )
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
