"""The committed tiny CLIP the tests use (trained by tools/train_tiny_clip.py)."""

from conftest import REPO_ROOT

TINY_MODEL = "ovseg-tiny-clip"
TINY_CHECKPOINT = REPO_ROOT / "models" / "ovseg-tiny-clip.safetensors"
