#!/usr/bin/env bash
# The GPU benchmark in one prepared script, for a CUDA machine whose Python already has torch,
# torchvision, opencv, numpy, safetensors and pillow (no ROS needed).
#   tools/gpu_bench.sh [OUT_DIR]
# Wheels of the rest (open_clip_torch, ftfy, wcwidth) may lie in .whl/ for machines without a
# package index:  pip download --no-deps -d .whl open_clip_torch==3.3.0 ftfy wcwidth
# Writes OUT_DIR/bench.md and bench.json: crop and dense modes, ViT-B-16 with random weights,
# 640x480, 100 proposals, fp16 and fp32, on the same GPU in one run; then fp16 with torch.compile
# into OUT_DIR/compiled.
set -euo pipefail
out=${1:-out/gpu_bench}
cd "$(dirname "$0")/.."
if ! python3 -c 'import open_clip' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/ovseg_site .whl/*.whl
  export PYTHONPATH="/tmp/ovseg_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -m ovseg_ros.cli bench --model ViT-B-16 --device cuda --size 640x480 --proposals 100 \
  --classifier crop dense --precision fp16 fp32 --iterations 20 --warmup 3 --out "$out"
# The same in fp16 with the image tower under torch.compile (needs Triton); optional.
python3 -m ovseg_ros.cli bench --model ViT-B-16 --device cuda --size 640x480 --proposals 100 \
  --classifier crop dense --precision fp16 --compile --iterations 20 --warmup 3 \
  --out "$out/compiled" || echo "torch.compile run failed; the figures above stand"
