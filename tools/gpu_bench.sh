#!/usr/bin/env bash
# The GPU benchmark in one prepared script, for a CUDA machine whose Python already has torch,
# torchvision, opencv, numpy, safetensors and pillow (no ROS needed).
#   tools/gpu_bench.sh [OUT_DIR]
# Wheels of the rest (open_clip_torch, ftfy, wcwidth) may lie in .whl/ for machines without a
# package index:  pip download --no-deps -d .whl open_clip_torch==3.3.0 ftfy wcwidth
# Writes OUT_DIR/bench.md and bench.json: crop and dense modes, ViT-B-16 with random weights,
# 640x480, 100 proposals, fp16 and fp32, on the same GPU in one run, each also with stage 1 of
# the next frame on a second thread (--pipeline); then fp16 with the `hierarchy` proposals on the
# GPU and the host-wait profile (--profile) into OUT_DIR/hierarchy, and their proposal figures on
# the photo world (needs scikit-image) into OUT_DIR/photo-hierarchy; then toy-world quality (tiny
# CLIP, 50 scenes, both vocabularies) in fp16 and fp32 for both modes into OUT_DIR/quality.md;
# then fp16 with the paper's MaskFormer proposals (random weights) into OUT_DIR/maskformer; then
# fp16 with torch.compile into OUT_DIR/compiled.
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
  --classifier crop dense --precision fp16 fp32 --iterations 20 --warmup 3 --pipeline --out "$out"
# Stage 1 on the device: the training-free `hierarchy` generator, and what the host waits for.
python3 -m ovseg_ros.cli bench --model ViT-B-16 --device cuda --size 640x480 --proposals 100 \
  --proposal-generator hierarchy --classifier crop dense --precision fp16 --iterations 20 \
  --warmup 3 --profile --out "$out/hierarchy" || echo "hierarchy run failed; the figures above stand"
python3 -m ovseg_ros.cli eval toy:photo --limit 30 --proposals-only --proposals hierarchy \
  --device cuda --out "$out/photo-hierarchy" || echo "photo-world run failed (scikit-image?)"
# Toy-world quality on the GPU: does fp16 label as well as fp32?
for classifier in crop dense; do
  for precision in fp16 fp32; do
    for vocabulary in shape color; do
      python3 -m ovseg_ros.cli eval "toy:$vocabulary" --limit 50 --device cuda \
        --precision "$precision" --classifier "$classifier" \
        --out "$out/eval/$classifier-$precision-$vocabulary" >/dev/null 2>>"$out/eval.log"
    done
  done
done
python3 - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
lines = ["| classifier | precision | dataset | mIoU % | pixel accuracy % | ms/frame |",
         "|---|---|---|---|---|---|"]
for path in sorted(out.glob("eval/*/metrics.json")):
    report = json.loads(path.read_text())
    s, m = report["settings"], report["metrics"]
    total = sum(report["mean_timings_ms"].values())
    lines.append(f"| {s['classifier']} | {s['precision']} | {s['dataset']} "
                 f"| {100 * m['miou']:.1f} | {100 * m['pixel_accuracy']:.1f} | {total:.1f} |")
(out / "quality.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
# Stage 1 on the GPU: the paper's MaskFormer (ResNet-101c, 100 queries) with random weights.
python3 -m ovseg_ros.cli bench --model ViT-B-16 --device cuda --size 640x480 --proposals 100 \
  --proposal-generator maskformer --classifier crop dense --precision fp16 --iterations 20 \
  --warmup 3 --out "$out/maskformer" || echo "maskformer run failed; the figures above stand"
# The first run in fp16 with the image tower under torch.compile (needs Triton); optional,
# last, and bounded to 200 s.
timeout 200 python3 -m ovseg_ros.cli bench --model ViT-B-16 --device cuda --size 640x480 \
  --proposals 100 --classifier crop dense --precision fp16 --compile --iterations 20 --warmup 3 \
  --out "$out/compiled" || echo "torch.compile run failed; the figures above stand"
