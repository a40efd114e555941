"""Dataset readers: the converted folder layout on tiny files, bad input, the toy world."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.datasets import (
    VOID_INSTANCE,
    DatasetError,
    FolderDataset,
    ToyWorldDataset,
)


def write_dataset(root: Path, labels: dict[str, np.ndarray], image_size=(4, 3)) -> None:
    """Writes root/classes.txt (3 classes), root/images/NAME.png and root/labels/NAME.png."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("sky\ntree\nroad\n")
    width, height = image_size
    for i, (name, label) in enumerate(sorted(labels.items())):
        image = np.full((height, width, 3), (10 * i, 100, 200), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(label.astype(np.uint8)).save(root / "labels" / f"{name}.png")


def test_folder_dataset_reads_images_labels_and_classes(tmp_path):
    first = np.array([[0, 1, 2, 255], [0, 0, 1, 1], [2, 2, 2, 2]])
    second = np.zeros((3, 4), dtype=np.int64)
    write_dataset(tmp_path, {"b": second, "a": first})
    dataset = FolderDataset(tmp_path)
    assert dataset.class_names == ["sky", "tree", "road"]
    assert dataset.ignore_index == 255
    assert len(dataset) == 2
    samples = list(dataset)
    assert [s.name for s in samples] == ["a", "b"]
    np.testing.assert_array_equal(samples[0].label, first)
    np.testing.assert_array_equal(samples[1].label, second)
    assert samples[0].image.shape == (3, 4, 3)
    assert samples[0].image.dtype == np.uint8
    np.testing.assert_array_equal(samples[1].image[0, 0], [10, 100, 200])


def test_palette_and_16_bit_labels_give_indices(tmp_path):
    write_dataset(tmp_path, {"a": np.zeros((3, 4))})
    palette = Image.fromarray(np.array([[0, 1, 2, 255]] * 3, dtype=np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
    palette.save(tmp_path / "labels" / "a.png")
    np.testing.assert_array_equal(FolderDataset(tmp_path)[0].label[0], [0, 1, 2, 255])

    Image.fromarray(np.array([[0, 1, 2, 255]] * 3, dtype=np.uint16)).save(
        tmp_path / "labels" / "a.png"
    )
    np.testing.assert_array_equal(FolderDataset(tmp_path)[0].label[2], [0, 1, 2, 255])


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nowhere")):
        FolderDataset(tmp_path / "nowhere")
    write_dataset(tmp_path, {"a": np.zeros((3, 4))})
    with pytest.raises(DatasetError, match=str(tmp_path / "annotations")):
        FolderDataset(tmp_path, label_dir="annotations")


def test_missing_class_file_is_named(tmp_path):
    write_dataset(tmp_path, {"a": np.zeros((3, 4))})
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="class-name file not found: .*classes.txt"):
        FolderDataset(tmp_path)


def test_image_without_label_is_named(tmp_path):
    write_dataset(tmp_path, {"a": np.zeros((3, 4))})
    (tmp_path / "labels" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"no label for image .*a\.png"):
        FolderDataset(tmp_path)


def test_label_size_mismatch_names_the_files(tmp_path):
    write_dataset(tmp_path, {"a": np.zeros((3, 4)), "b": np.zeros((3, 4))})
    Image.fromarray(np.zeros((5, 4), dtype=np.uint8)).save(tmp_path / "labels" / "b.png")
    dataset = FolderDataset(tmp_path)
    assert dataset[0].label.shape == (3, 4)
    with pytest.raises(DatasetError) as error:
        dataset[1]
    message = str(error.value)
    assert str(tmp_path / "labels" / "b.png") in message
    assert str(tmp_path / "images" / "b.png") in message
    assert "4x5" in message and "4x3" in message


def test_label_value_beyond_classes_names_the_file(tmp_path):
    write_dataset(tmp_path, {"a": np.array([[0, 1, 2, 3], [7, 255, 0, 0], [0, 0, 0, 0]])})
    with pytest.raises(DatasetError) as error:
        FolderDataset(tmp_path)[0]
    message = str(error.value)
    assert str(tmp_path / "labels" / "a.png") in message
    assert "[3, 7]" in message


def test_color_label_png_is_refused(tmp_path):
    write_dataset(tmp_path, {"a": np.zeros((3, 4))})
    Image.fromarray(np.zeros((3, 4, 3), dtype=np.uint8)).save(tmp_path / "labels" / "a.png")
    with pytest.raises(DatasetError, match=r"label .*a\.png has mode RGB"):
        FolderDataset(tmp_path)[0]


def test_unreadable_image_is_named(tmp_path):
    write_dataset(tmp_path, {"a": np.zeros((3, 4))})
    (tmp_path / "images" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*a\.png"):
        FolderDataset(tmp_path)[0]


def test_toy_world_dataset_matches_the_generator():
    dataset = ToyWorldDataset("color", seeds=[toy_world.EVAL_SEEDS.start + 3], height=60, width=80)
    assert dataset.class_names == toy_world.color_classes()
    assert dataset.unseen_classes == list(toy_world.UNSEEN_COLORS)
    sample = dataset[0]
    scene = toy_world.generate_scene(toy_world.EVAL_SEEDS.start + 3, 60, 80)
    np.testing.assert_array_equal(sample.image, scene.image)
    np.testing.assert_array_equal(sample.label, scene.color_labels)
    assert sample.name == f"seed-{toy_world.EVAL_SEEDS.start + 3}"

    shapes = ToyWorldDataset("shape", seeds=range(2), height=60, width=80)
    assert shapes.class_names[0] == "background"
    assert [s.label.max() < len(shapes.class_names) for s in shapes] == [True, True]
    with pytest.raises(ValueError, match="label_space"):
        ToyWorldDataset("texture")


def test_default_toy_world_seeds_are_held_out():
    dataset = ToyWorldDataset()
    assert len(dataset) == 100
    assert all(seed in toy_world.EVAL_SEEDS for seed in dataset.seeds)


def test_toy_world_dataset_carries_instances():
    seed = toy_world.EVAL_SEEDS.start + 3
    sample = ToyWorldDataset("shape", seeds=[seed], height=60, width=80)[0]
    np.testing.assert_array_equal(
        sample.instances, toy_world.generate_scene(seed, 60, 80).instances
    )


def write_instances(root: Path, maps: dict[str, np.ndarray]) -> None:
    """Writes root/instances/NAME.png (the array's dtype decides 8 or 16 bit)."""
    (root / "instances").mkdir(exist_ok=True)
    for name, instances in maps.items():
        Image.fromarray(instances).save(root / "instances" / f"{name}.png")


def test_folder_instances_8_and_16_bit(tmp_path):
    write_dataset(tmp_path, {"a": np.zeros((3, 4)), "b": np.zeros((3, 4))})
    eight = np.array([[0, 1, 1, 255], [0, 2, 2, 0], [0, 0, 0, 0]], dtype=np.uint8)
    sixteen = np.array([[0, 1000, 1000, 0], [0, 0, 0, 0], [65535, 0, 0, 7]], dtype=np.uint16)
    write_instances(tmp_path, {"a": eight, "b": sixteen})
    dataset = FolderDataset(tmp_path)
    assert dataset.labels is not None
    first, second = dataset[0], dataset[1]
    assert first.instances.dtype == np.int32 and first.label is not None
    expected = eight.astype(np.int32)
    expected[0, 3] = VOID_INSTANCE  # 255 in an 8-bit map: void, as VOC's boundaries
    np.testing.assert_array_equal(first.instances, expected)
    np.testing.assert_array_equal(second.instances, sixteen.astype(np.int32))
    # Without instances/, samples have none.
    (tmp_path / "instances" / "a.png").unlink()
    (tmp_path / "instances" / "b.png").unlink()
    (tmp_path / "instances").rmdir()
    assert FolderDataset(tmp_path)[0].instances is None


def test_missing_instance_map_is_named(tmp_path):
    write_dataset(tmp_path, {"a": np.zeros((3, 4)), "b": np.zeros((3, 4))})
    write_instances(tmp_path, {"a": np.zeros((3, 4), dtype=np.uint8)})
    with pytest.raises(
        DatasetError, match=r"no instance map for image .*b\.png: expected .*b\.png"
    ):
        FolderDataset(tmp_path)


def test_instance_map_size_mismatch_names_the_files(tmp_path):
    write_dataset(tmp_path, {"a": np.zeros((3, 4))})
    write_instances(tmp_path, {"a": np.zeros((4, 4), dtype=np.uint16)})
    with pytest.raises(DatasetError) as error:
        FolderDataset(tmp_path)[0]
    message = str(error.value)
    assert f"instance map {tmp_path / 'instances' / 'a.png'}" in message
    assert str(tmp_path / "images" / "a.png") in message and "4x4" in message


def test_folder_of_images_and_instances_only(tmp_path):
    write_dataset(tmp_path, {"a": np.zeros((3, 4))})
    write_instances(tmp_path, {"a": np.array([[0, 1, 1, 0]] * 3, dtype=np.uint8)})
    for path in (tmp_path / "labels" / "a.png", tmp_path / "classes.txt"):
        path.unlink()
    (tmp_path / "labels").rmdir()
    with pytest.raises(DatasetError, match="dataset folder not found"):
        FolderDataset(tmp_path)  # labels expected unless label_dir=None
    dataset = FolderDataset(tmp_path, label_dir=None)
    assert dataset.class_names == [] and dataset.labels is None
    sample = dataset[0]
    assert sample.label is None and sample.instances[0, 1] == 1
    (tmp_path / "instances" / "a.png").unlink()
    (tmp_path / "instances").rmdir()
    with pytest.raises(DatasetError, match=str(tmp_path / "instances")):
        FolderDataset(tmp_path, label_dir=None)
