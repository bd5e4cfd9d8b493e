#!/usr/bin/env bash
# Issue 19's rain-gate measurement: COCO128 + YOLOv5n and CamVid val + ESPNet, with the project's own light
# rain (in-distribution) and transplanted Rain100L rain (held-out), clean / rainy / derained / clean_derained
# with the gate off and at GATE (default auto). Copies are cached in CACHE (shared with generalization.py runs).
# Usage: bash benchmarks/gate_downstream.sh [WEIGHTS] [OUT]   (env: GATE, CACHE, SHARED, PY)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}; SHARED=${SHARED:-../shared}; GATE=${GATE:-auto}; CACHE=${CACHE:-runs/gen-cache}
WEIGHTS=${1:-default}; OUT=${2:-runs/gate-downstream}
D=$SHARED/data; M=$SHARED/models
for rain in light "transplant:$D/rain100L_test"; do
  name=$([ "$rain" = light ] && echo light || echo rain100L)
  "$PY" eval_tasks/detect.py --data "$D/coco128/coco128.yaml" --model "$M/yolov5n-coco.torchscript" \
    --weights "$WEIGHTS" --rain "$rain" --derain-clean --gate "$GATE" --cache "$CACHE" --out "$OUT/detect-$name"
  "$PY" eval_tasks/segment.py --images "$D/camvid_val/images" --masks "$D/camvid_val/masks" \
    --model "$M/espnet-cityscapes.torchscript" --num-classes 11 --class-map "$M/cityscapes_to_camvid.json" \
    --class-names "$D/camvid_val/classes.txt" --ignore-index 11 --weights "$WEIGHTS" --rain "$rain" \
    --derain-clean --gate "$GATE" --cache "$CACHE" --out "$OUT/segment-$name"
done
