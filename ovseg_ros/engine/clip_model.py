"""CLIP loading with open_clip: a model name plus a pretrained tag or a local checkpoint file.

`load_clip` is the one entry point. Real weights (`ViT-B-16` + `openai`), the project's own tiny
model (`ovseg-tiny-clip` + a local safetensors file) and random weights for benchmarks all go
through it. Checkpoints load safely: safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

TINY_MODEL = "ovseg-tiny-clip"
"""The project's own small CLIP, trained on the toy world (tools/train_tiny_clip.py)."""

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")


class WeightsNotFoundError(RuntimeError):
    """Weights were asked for but cannot be found or downloaded."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the architecture it is loaded into."""


@dataclass
class ClipModel:
    """A loaded open_clip model, in eval mode on its device, with what callers need around it.

    image_size: (height, width) in pixels the image tower takes.
    mean, std: per-channel RGB normalisation for images in [0, 1].
    dtype: compute dtype of the image tower. float16 (CUDA) runs under autocast with float32
        weights; bfloat16 (CPU) stores the image tower's weights in bfloat16, because CPU autocast
        converts the weights on every call and is slower than float32. The text tower always
        computes in float32 on the CPU.
    """

    model: open_clip.CLIP
    tokenizer: Callable[[list[str]], torch.Tensor]
    name: str
    source: str
    device: torch.device
    dtype: torch.dtype
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint image-text embedding space."""
        return int(self.model.text_projection.shape[1])

    def autocast(self) -> torch.autocast:
        """Context for a forward pass in this model's compute dtype."""
        enabled = self.dtype == torch.float16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=enabled)

    @property
    def dtype_name(self) -> str:
        """The image tower's compute dtype as a word: "float16", "bfloat16" or "float32"."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def image_input_dtype(self) -> torch.dtype:
        """The dtype the image tower's weights are stored in (what its input must be cast to)."""
        return self.model.visual.conv1.weight.dtype

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, *image_size) float, normalised -> (B, D) float32, unit norm."""
        with self.autocast():
            features = self.model.encode_image(images.to(self.device, self.image_input_dtype))
        return F.normalize(features.float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """texts: T strings -> (T, D) float32, unit norm."""
        tokens = self.tokenizer(texts).to(self.device)
        with self.autocast():
            features = self.model.encode_text(tokens)
        return F.normalize(features.float(), dim=-1)


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available, else the CPU."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products in hardware (AVX512-BF16 or AMX).

    Asks torch's CPU probes (private API); a torch without them counts as no."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """'auto' is fp16 on CUDA, bf16 on a CPU with native bf16 (cpu_has_native_bf16), else fp32.

    fp16 on the CPU and bf16 on CUDA are refused (slow there, with nothing gained)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            precision = "fp16"
        else:
            precision = "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            "precision 'fp16' needs a CUDA device; use 'bf16', 'fp32' or 'auto' on the CPU"
        )
    if precision == "bf16" and device.type != "cpu":
        raise ValueError("precision 'bf16' is for the CPU; use 'fp16' or 'auto' on CUDA")
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a checkpoint file without unpickling code: safetensors, or torch.load(weights_only).

    Accepts a bare state dict or one nested under 'state_dict' / 'model'.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader error means "not a usable checkpoint"
        raise CheckpointMismatchError(f"{path} is not a readable checkpoint: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"{path} holds no tensor state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def text_tower_digest(state: dict[str, torch.Tensor]) -> str:
    """A fingerprint of a CLIP state dict's text side (every tensor outside `visual.`): sha256 over
    the names and float16 bytes in name order, as "text-sha256:<hex>". A model trained in this
    CLIP's text space (the toy MaskFormer's class head) depends on exactly these tensors."""
    digest = hashlib.sha256()
    for name in sorted(key for key in state if not key.startswith("visual.")):
        digest.update(name.encode("utf-8"))
        digest.update(state[name].detach().cpu().to(torch.float16).contiguous().numpy().tobytes())
    return "text-sha256:" + digest.hexdigest()


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raises CheckpointMismatchError listing missing, unexpected and wrongly shaped tensors."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:

        def listing(title: str, items: list[str]) -> str:
            more = f" ... and {len(items) - 10} more" if len(items) > 10 else ""
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:10]) + more if items else ""

        raise CheckpointMismatchError(
            f"{source} does not match the architecture:"
            + listing("missing", missing)
            + listing("unexpected", unexpected)
            + listing("shape mismatch", shapes)
        )


def bundled_model_file(filename: str) -> Path:
    """A model file committed with the project (models/): found in a source checkout, else in
    share/ovseg_ros/models of a ROS install on AMENT_PREFIX_PATH."""
    candidates = [Path(__file__).resolve().parents[2] / "models" / filename]
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidates.append(Path(prefix) / "share" / "ovseg_ros" / "models" / filename)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise WeightsNotFoundError(
        f"{filename} not found in "
        + ", ".join(str(c.parent) for c in candidates)
        + "; pass the file explicitly (checkpoint parameter / --checkpoint)"
    )


def default_checkpoint() -> Path:
    """The committed tiny CLIP weights (see bundled_model_file)."""
    return bundled_model_file(f"{TINY_MODEL}.safetensors")


@contextmanager
def _without_random_init_warning() -> Iterator[None]:
    """open_clip warns that a model built without a pretrained tag is random; here the weights
    come next from a checkpoint (or are meant to be random), so the warning only misleads."""

    def keep(record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _cache_dir() -> str:
    """Where open_clip (through huggingface_hub) caches downloaded weights."""
    return os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )


def load_clip(
    model_name: str,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    random_weights: bool = False,
    compile_image_tower: bool = False,
) -> ClipModel:
    """Builds an open_clip model and loads its weights.

    Exactly one weight source: `pretrained` (an open_clip tag such as 'openai', downloaded and
    cached by open_clip), `checkpoint` (a local file), or `random_weights=True` (benchmarks only).
    compile_image_tower: wrap the image tower's forward (the crop path) in torch.compile with
    dynamic batch sizes; the first frames pay the compilation (tens of seconds), which needs a
    C++ compiler on the CPU and Triton on CUDA.
    """
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown CLIP model {model_name!r}; open_clip knows e.g. "
            + ", ".join(sorted(open_clip.list_models())[:12])
            + " ... (open_clip.list_models() lists all)"
        )
    sources = [s for s in (pretrained, checkpoint) if s] + (["random"] if random_weights else [])
    if len(sources) != 1:
        raise ValueError(
            "give exactly one weight source: pretrained tag, checkpoint file, or random weights "
            f"(got pretrained={pretrained!r}, checkpoint={checkpoint!r}, random={random_weights})"
        )
    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)

    if pretrained:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise WeightsNotFoundError(
                f"open_clip has no pretrained tag {pretrained!r} for {model_name}; "
                f"known tags: {', '.join(tags) or 'none'}"
            )
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, device="cpu")
        except Exception as exc:  # noqa: BLE001 - network and hub errors vary by version
            raise WeightsNotFoundError(
                f"could not load CLIP weights {model_name} / {pretrained}: {exc}\n"
                f"  open_clip caches downloads in {_cache_dir()} (HF_HOME / HF_HUB_CACHE).\n"
                "  Without a network: on a machine with one run\n"
                f"    python -c \"import open_clip; open_clip.create_model('{model_name}', "
                f"pretrained='{pretrained}')\"\n"
                "  and copy that cache here, or pass a local weights file as `checkpoint` "
                "(safetensors or a PyTorch state dict)."
            ) from exc
        source = f"{model_name}/{pretrained}"
    else:
        with _without_random_init_warning():
            model = open_clip.create_model(model_name, pretrained=None, device="cpu")
        source = "random weights"
        if checkpoint:
            state = read_state_dict(checkpoint)
            check_state_dict(model, state, str(checkpoint))
            model.load_state_dict(state, strict=True)
            source = str(checkpoint)

    model.eval().to(torch_device)
    if dtype == torch.bfloat16:
        model.visual.to(torch.bfloat16)
    if compile_image_tower:
        model.visual = torch.compile(model.visual, dynamic=True)
    size = model.visual.image_size
    image_size = (size, size) if isinstance(size, int) else tuple(size)
    return ClipModel(
        model=model,
        tokenizer=open_clip.get_tokenizer(model_name),
        name=model_name,
        source=source,
        device=torch_device,
        dtype=dtype,
        image_size=image_size,
        mean=tuple(model.visual.image_mean or open_clip.OPENAI_DATASET_MEAN),
        std=tuple(model.visual.image_std or open_clip.OPENAI_DATASET_STD),
    )
