"""The committed tiny CLIP: loads through the engine's loader and meets its zero-shot bars on
held-out toy-world crops made by the segmenter's own crop function."""

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.clip_model import (
    CheckpointMismatchError,
    ClipModel,
    load_clip,
    text_tower_digest,
)
from ovseg_ros.engine.crops import masked_crops, normalize_image

CHECKPOINT = Path(__file__).resolve().parents[1] / "models" / "ovseg-tiny-clip.safetensors"
NUM_SHAPE_CROPS = 300


@pytest.fixture(scope="module")
def clip() -> ClipModel:
    return load_clip("ovseg-tiny-clip", checkpoint=CHECKPOINT, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def held_out(clip):
    """Crops of the visible mask of every shape, and of the whole background, of held-out
    scenes until NUM_SHAPE_CROPS shape crops, encoded: (image embeddings (N, D), shape ids (N,),
    color ids (N,)), ids index shape_classes() / color_classes()."""
    images, shapes, colors = [], [], []
    seed = toy_world.EVAL_SEEDS.start
    while sum(s != 0 for s in shapes) < NUM_SHAPE_CROPS:
        scene = toy_world.generate_scene(seed)
        masks = [scene.instances == k for k in range(len(scene.shapes) + 1)]
        image = normalize_image(scene.image, clip.mean, clip.std)
        images.append(masked_crops(image, torch.from_numpy(np.stack(masks)), clip.image_size))
        shapes += [0] + [toy_world.SHAPES.index(s) + 1 for s in scene.shapes]
        colors += [0] + [toy_world.COLORS.index(c) + 1 for c in scene.colors]
        seed += 1
    return clip.encode_images(torch.cat(images)), torch.tensor(shapes), torch.tensor(colors)


def predict(clip: ClipModel, embeddings: torch.Tensor, names: list[str], templates) -> torch.Tensor:
    """Class index per image embedding, names prompt-ensembled over templates: (N,) int64."""
    text = torch.stack(
        [F.normalize(clip.encode_texts([t.format(n) for t in templates]).mean(0), dim=0)
         for n in names]
    )  # fmt: skip
    return (embeddings @ text.T).argmax(1)


def accuracies(clip, held_out, templates) -> dict[str, float]:
    embeddings, shapes, colors = held_out
    is_shape = shapes != 0
    out = {}
    for space, labels, names in (
        ("shape", shapes, toy_world.shape_classes()),
        ("color", colors, toy_world.color_classes()),
    ):
        correct = predict(clip, embeddings, names, templates) == labels
        out[space] = correct[is_shape].float().mean().item()
        out[f"{space} background"] = correct[~is_shape].float().mean().item()
    return out


def test_checkpoint_is_small_fp16_and_loads_into_fp32(clip):
    assert CHECKPOINT.stat().st_size <= 8_000_000
    state = load_file(str(CHECKPOINT))
    assert {v.dtype for v in state.values()} == {torch.float16}
    weight = clip.model.visual.conv1.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, state["visual.conv1.weight"].float(), rtol=0, atol=0)
    assert clip.image_size == (64, 64)


def test_zero_shot_with_the_training_prompt(clip, held_out):
    result = accuracies(clip, held_out, ("a photo of a {}.",))
    assert result["shape"] >= 0.95, result
    assert result["color"] >= 0.95, result
    assert result["shape background"] >= 0.9, result
    assert result["color background"] >= 0.9, result


def test_zero_shot_with_templates_never_used_in_training(clip, held_out):
    result = accuracies(clip, held_out, toy_world.HELD_OUT_TEMPLATES)
    assert result["shape"] >= 0.90, result
    assert result["color"] >= 0.90, result
    assert result["shape background"] >= 0.9, result
    assert result["color background"] >= 0.9, result


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    config = open_clip.get_model_config("ovseg-tiny-clip")
    config["vision_cfg"]["width"] = 128
    (tmp_path / "ovseg-tiny-clip-wide.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    with pytest.raises(CheckpointMismatchError) as error:
        load_clip("ovseg-tiny-clip-wide", checkpoint=CHECKPOINT, device="cpu")
    message = str(error.value)
    assert "shape mismatch" in message
    assert "visual.conv1.weight: checkpoint (96, 3, 8, 8) vs model (128, 3, 8, 8)" in message


def test_checkpoint_with_a_missing_tensor_is_refused(tmp_path):
    state = load_file(str(CHECKPOINT))
    del state["visual.proj"]
    state["extra.weight"] = torch.zeros(2)
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken))
    with pytest.raises(CheckpointMismatchError) as error:
        load_clip("ovseg-tiny-clip", checkpoint=broken, device="cpu")
    message = str(error.value)
    assert "missing (1): visual.proj" in message
    assert "unexpected (1): extra.weight" in message


def test_text_tower_digest_sees_text_tensors_only():
    state = load_file(CHECKPOINT)
    digest = text_tower_digest(state)
    assert digest.startswith("text-sha256:") and digest == text_tower_digest(dict(state))
    image_changed = dict(state, **{"visual.proj": state["visual.proj"] + 1})
    assert text_tower_digest(image_changed) == digest
    text_changed = dict(state, text_projection=state["text_projection"] + 1)
    assert text_tower_digest(text_changed) != digest
