"""Weights: where a weights file is found, which source wins, checkpoints holding NaN or Inf,
and a wheel that carries the bundled models to a machine without the source checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file, save_file
from tiny_model import TINY_CHECKPOINT, TINY_MODEL

from ovseg_ros.engine import clip_model
from ovseg_ros.engine.clip_model import (
    CheckpointMismatchError,
    WeightsNotFoundError,
    load_clip,
    resolve_weights_path,
)

RELATIVE_TINY = Path("models") / f"{TINY_MODEL}.safetensors"
BUNDLED_MODELS = ("ovseg-tiny-clip.safetensors", "ovseg-toy-maskformer.safetensors")


def test_absolute_path_is_taken_as_it_is():
    assert resolve_weights_path(TINY_CHECKPOINT) == TINY_CHECKPOINT


def test_relative_path_is_looked_up_in_the_working_directory_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_weights_path(RELATIVE_TINY) == TINY_CHECKPOINT  # from the checkout
    (tmp_path / "models").mkdir()
    (tmp_path / RELATIVE_TINY).write_bytes(b"")
    assert resolve_weights_path(RELATIVE_TINY) == tmp_path / RELATIVE_TINY


def test_relative_path_is_looked_up_in_every_ros_share_directory(tmp_path, monkeypatch):
    share = tmp_path / "prefix" / "share" / "ovseg_ros"
    (share / "extra").mkdir(parents=True)
    (share / "extra" / "net.pth").write_bytes(b"")
    monkeypatch.setenv("AMENT_PREFIX_PATH", os.pathsep.join(["/nowhere", str(tmp_path / "prefix")]))
    monkeypatch.chdir(tmp_path)
    assert resolve_weights_path("extra/net.pth") == share / "extra" / "net.pth"


def test_a_missing_file_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "prefix"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsNotFoundError) as error:
        resolve_weights_path("models/absent.safetensors")
    message = str(error.value)
    assert message.startswith("weights file models/absent.safetensors not found; looked for ")
    for place in (
        tmp_path / "models" / "absent.safetensors",
        REPO_ROOT / "ovseg_ros" / "models" / "absent.safetensors",
        REPO_ROOT / "models" / "absent.safetensors",
        tmp_path / "prefix" / "share" / "ovseg_ros" / "models" / "absent.safetensors",
    ):
        assert str(place) in message


def test_checkpoint_overrides_pretrained_without_touching_the_network(tmp_path, monkeypatch):
    def no_network(*args):
        raise AssertionError("the pretrained tag was looked up")

    monkeypatch.setattr(clip_model, "check_pretrained_available", no_network)
    monkeypatch.chdir(tmp_path)
    clip = load_clip(TINY_MODEL, pretrained="openai", checkpoint=RELATIVE_TINY, device="cpu")
    assert clip.source == str(TINY_CHECKPOINT)


def test_cached_pretrained_weights_are_used_without_asking_the_hub(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked")

    repo = tmp_path / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc" / "open_clip_model.safetensors").write_bytes(b"")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    clip_model.check_pretrained_available("ViT-B-16", "openai")


def test_pretrained_weights_trained_with_quick_gelu_run_with_it(monkeypatch):
    """OpenAI's ViT-B/16 was trained with QuickGELU, which open_clip's ViT-B-16 config lacks."""
    create_model = clip_model.open_clip.create_model
    calls = []

    def record(name, pretrained=None, device="cpu", force_quick_gelu=False):
        calls.append((name, pretrained, force_quick_gelu))
        return create_model(TINY_MODEL, device=device)  # a stand-in, no download

    monkeypatch.setattr(clip_model, "check_pretrained_available", lambda *args: None)
    monkeypatch.setattr(clip_model.open_clip, "create_model", record)
    assert load_clip("ViT-B-16", pretrained="openai", device="cpu").source == "ViT-B-16/openai"
    load_clip("ViT-B-16", pretrained="laion2b_s34b_b88k", device="cpu")
    assert calls == [("ViT-B-16", "openai", True), ("ViT-B-16", "laion2b_s34b_b88k", False)]


@pytest.mark.parametrize(
    "sources",
    [
        {},
        {"random_weights": True, "checkpoint": TINY_CHECKPOINT},
        {"random_weights": True, "pretrained": "x"},
    ],
)
def test_random_weights_come_alone_and_some_source_is_needed(sources):
    with pytest.raises(ValueError, match="give a pretrained tag or a checkpoint file"):
        load_clip(TINY_MODEL, device="cpu", **sources)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_holding_nan_or_inf_is_refused_with_the_tensor_names(tmp_path, suffix):
    state = load_file(str(TINY_CHECKPOINT))
    state["visual.proj"][0, 0] = float("nan")
    state["token_embedding.weight"][3, 1] = float("inf")
    path = tmp_path / f"broken{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        load_clip(TINY_MODEL, checkpoint=path, device="cpu")
    assert str(error.value) == (
        f"{path} holds NaN or Inf values in 2 tensor(s): token_embedding.weight, visual.proj"
    )


def _copy_sources(destination: Path) -> Path:
    """The checkout's files a package build reads, without environments and build trees."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv*", ".build*", "build", "out", "*.egg-info", "__pycache__", ".*_cache"
    )
    return Path(shutil.copytree(REPO_ROOT, destination, ignore=ignore))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from an sdist of a copy of the checkout (so MANIFEST.in is tested too)."""
    work = tmp_path_factory.mktemp("dist")
    source = _copy_sources(work / "src")
    quiet = {"capture_output": True, "text": True, "check": True, "timeout": 300}
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(work)], cwd=source, **quiet
    )
    (sdist,) = work.glob("ovseg_ros-*.tar.gz")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip_wheel, str(sdist), "-w", str(work)], **quiet)
    (built,) = work.glob("ovseg_ros-*.whl")
    with tarfile.open(sdist) as archive:
        assert any(
            name.endswith("/models/ovseg-tiny-clip.safetensors") for name in archive.getnames()
        )
    return built


def test_wheel_ships_the_bundled_models_and_model_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in BUNDLED_MODELS:
        assert f"ovseg_ros/models/{model}" in names
    assert "ovseg_ros/engine/model_configs/ovseg-tiny-clip.json" in names
    assert "ovseg_ros/engine/options.py" in names


@pytest.mark.slow
def test_installed_wheel_evaluates_the_toy_world_without_the_checkout(wheel, tmp_path):
    """`pip install .` then `ovseg eval toy:shape` from any directory: the wheel goes into a fresh
    venv that borrows torch & co. from this environment's site-packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Without the checkout's sources and ROS install on the path (pip would see them installed).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    subprocess.run([*install, "-q", "--no-deps", "--no-index", str(wheel)], env=env, check=True)
    run = subprocess.run(
        [str(venv / "bin" / "ovseg"), "eval", "toy:shape", "--limit", "1", "--device", "cpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"{site}/ovseg_ros/models/{TINY_MODEL}.safetensors" in run.stdout
    assert (tmp_path / "ovseg-eval" / "metrics.json").is_file()
