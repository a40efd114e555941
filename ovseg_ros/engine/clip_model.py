"""CLIP loading with open_clip: a model name plus a pretrained tag or a local checkpoint file.

`load_clip` is the one entry point. Real weights (`ViT-B-16` + `openai`), the project's own tiny
model (`ovseg-tiny-clip` + a local safetensors file) and random weights for benchmarks all go
through it. Checkpoints load safely: safetensors, or `torch.load(weights_only=True)`, and are
refused when they hold NaN or Inf. A relative weights path is looked up in the working directory,
then in the package's install folders (`resolve_weights_path`).
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

from ovseg_ros.engine.options import DEVICES, PRECISIONS, TINY_MODEL

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

HUB_PROBE_TIMEOUT_S = 5.0
"""How long the check that the Hugging Face hub answers waits before weights count as
unreachable (huggingface_hub's own downloads retry for about a minute)."""


class WeightsNotFoundError(RuntimeError):
    """Weights were asked for but cannot be found or downloaded."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint is unusable: unreadable, holding NaN or Inf, or not fitting the architecture."""


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
        """texts: T strings -> (T, D) float32, unit norm. A causal text tower pooled at the
        end-of-text token runs on the tokens up to the batch's last end-of-text only
        (encode_text_trimmed), others as open_clip runs them."""
        tokens = self.tokenizer(texts).to(self.device)
        with self.autocast():
            if text_tower_is_trimmable(self.model):
                features = encode_text_trimmed(self.model, tokens)
            else:
                features = self.model.encode_text(tokens)
        return F.normalize(features.float(), dim=-1)


def text_tower_is_trimmable(model: torch.nn.Module) -> bool:
    """Whether `model` is an open_clip CLIP whose text tower is causal and pools at the
    end-of-text token (the highest token id): then nothing after that token reaches the
    pooled features."""
    return (
        isinstance(model, open_clip.CLIP)
        and model.text_pool_type == "argmax"
        and model.attn_mask is not None
    )


def encode_text_trimmed(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text on tokens[:, :L] only, L the position after the batch's last
    end-of-text token: tokens (T, context_length) int -> (T, D) unnormalised features.

    With a causal mask, the padding after a prompt's end-of-text token cannot change the
    features pooled there, so the result equals encode_text's to float rounding, while a
    prompt of ten tokens no longer pays for CLIP's context of 77 (several times faster).
    Only for models text_tower_is_trimmable accepts."""
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x if model.text_projection is None else x @ model.text_projection


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


def _listing(items: list[str], limit: int = 10) -> str:
    """The first `limit` items joined with commas, then how many more there are."""
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Raises CheckpointMismatchError naming the floating-point tensors that hold NaN or Inf."""
    broken = sorted(
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    )
    if broken:
        raise CheckpointMismatchError(
            f"{source} holds NaN or Inf values in {len(broken)} tensor(s): {_listing(broken)}"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a checkpoint file without unpickling code: safetensors, or torch.load(weights_only).

    Accepts a bare state dict or one nested under 'state_dict' / 'model'. Raises
    CheckpointMismatchError for an unreadable file, one without tensors, or one holding NaN or
    Inf (check_finite).
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
    state = {k.removeprefix("module."): v for k, v in state.items()}
    check_finite(state, str(path))
    return state


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
    """Raises CheckpointMismatchError listing missing, unexpected and wrongly shaped tensors (one
    line)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    sections = [
        f"{title} ({len(items)}): {_listing(items)}"
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", shapes),
        )
        if items
    ]
    if sections:
        raise CheckpointMismatchError(
            f"{source} does not match the architecture: " + "; ".join(sections)
        )


def package_roots() -> list[Path]:
    """Folders that hold the package's bundled files (models/, config/), in lookup order: the
    installed Python package (a wheel ships models/ inside it), the source checkout when running
    from one, and share/ovseg_ros of every ROS prefix on AMENT_PREFIX_PATH (where colcon installs
    them)."""
    package = Path(__file__).resolve().parents[1]
    roots = [package]
    if (package.parent / "package.xml").is_file():
        roots.append(package.parent)
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        roots.append(Path(prefix) / "share" / "ovseg_ros")
    return roots


def _first_file(candidates: list[Path], what: str) -> Path:
    """The first candidate that is a file; WeightsNotFoundError listing them all otherwise."""
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise WeightsNotFoundError(
        f"{what} not found; looked for " + ", ".join(str(c) for c in candidates)
    )


def resolve_weights_path(path: str | Path) -> Path:
    """Where a weights file named by a user (checkpoint, proposal_checkpoint) is: an absolute path
    as it is; a relative one in the working directory, else under each of package_roots(), so that
    `models/ovseg-tiny-clip.safetensors` works from any directory. Raises WeightsNotFoundError
    listing every place looked."""
    path = Path(path).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [Path.cwd() / path] + [root / path for root in package_roots()]
    return _first_file(candidates, f"weights file {path}")


def bundled_model_file(filename: str) -> Path:
    """A model file committed with the project (models/), from package_roots()."""
    candidates = [root / "models" / filename for root in package_roots()]
    return _first_file(candidates, f"bundled model file {filename}")


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


def _weights_unavailable(model_name: str, pretrained: str, reason: str) -> WeightsNotFoundError:
    """The error for a pretrained tag whose weights cannot be had: model, tag, cache, remedies."""
    import huggingface_hub

    cache = huggingface_hub.constants.HF_HUB_CACHE
    return WeightsNotFoundError(
        f"CLIP weights {model_name} / {pretrained} could not be loaded from the cache {cache} "
        f'nor downloaded ({reason}). Either run python -c "import open_clip; '
        f"open_clip.create_model('{model_name}', pretrained='{pretrained}')\" on a machine with "
        f"a network and copy its cache to {cache} here (HF_HOME / HF_HUB_CACHE move it), or give "
        "a local weights file as checkpoint (--checkpoint; safetensors or a PyTorch state dict)."
    )


def _hub_weight_files(model_name: str, pretrained: str) -> tuple[str, list[str]]:
    """The Hugging Face repository and file names open_clip fetches a tag's weights from, in its
    order (the safetensors alternative first); ("", []) when the tag is not on the hub."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    hub = open_clip.get_pretrained_cfg(model_name, pretrained).get("hf_hub", "")
    if not hub:
        return "", []
    repo_id, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return repo_id, [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return repo_id, [filename[:-4] + ".safetensors", filename]
    return repo_id, [filename]


def check_pretrained_available(model_name: str, pretrained: str) -> None:
    """Returns at once when a tag's weights are in the Hugging Face cache or the hub answers for
    them; raises WeightsNotFoundError within seconds otherwise (HUB_PROBE_TIMEOUT_S per file, no
    retries), where open_clip would retry each file for about a minute."""
    import huggingface_hub

    repo_id, filenames = _hub_weight_files(model_name, pretrained)
    if not filenames:
        return
    for filename in filenames:
        if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, filename), str):
            return
    reason = ""
    for filename in filenames:
        url = huggingface_hub.hf_hub_url(repo_id, filename)
        try:
            huggingface_hub.get_hf_file_metadata(url, timeout=HUB_PROBE_TIMEOUT_S)
            return
        except Exception as exc:  # noqa: BLE001 - offline, network and hub errors vary by version
            reason = f"{url}: {type(exc).__name__}: {exc}".splitlines()[0]
    raise _weights_unavailable(model_name, pretrained, reason)


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

    Weight sources: `checkpoint` (a local file, see resolve_weights_path), which overrides
    `pretrained` (an open_clip tag such as 'openai', downloaded and cached by open_clip), or
    `random_weights=True` (benchmarks only; with neither of the others). Weights holding NaN or
    Inf are refused (CheckpointMismatchError).
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
    if random_weights == bool(pretrained or checkpoint):
        raise ValueError(
            "give a pretrained tag or a checkpoint file, or random weights alone "
            f"(got pretrained={pretrained!r}, checkpoint={checkpoint!r}, random={random_weights})"
        )
    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)

    if checkpoint:
        path = resolve_weights_path(checkpoint)
        state = read_state_dict(path)
        with _without_random_init_warning():
            model = open_clip.create_model(model_name, pretrained=None, device="cpu")
        check_state_dict(model, state, str(path))
        model.load_state_dict(state, strict=True)
        source = str(path)
    elif pretrained:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise WeightsNotFoundError(
                f"open_clip has no pretrained tag {pretrained!r} for {model_name}; "
                f"known tags: {', '.join(tags) or 'none'}"
            )
        check_pretrained_available(model_name, pretrained)
        # Weights trained with QuickGELU (OpenAI's) run with it even under a model name whose
        # config says GELU (ViT-B-16), which open_clip would only warn about.
        quick_gelu = open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False)
        try:
            model = open_clip.create_model(
                model_name, pretrained=pretrained, device="cpu", force_quick_gelu=quick_gelu
            )
        except Exception as exc:  # noqa: BLE001 - network and hub errors vary by version
            raise _weights_unavailable(model_name, pretrained, str(exc)) from exc
        source = f"{model_name}/{pretrained}"
        check_finite(model.state_dict(), source)
    else:
        with _without_random_init_warning():
            model = open_clip.create_model(model_name, pretrained=None, device="cpu")
        source = "random weights"

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
