#!/usr/bin/env bash
# Every measurement of the README's results tables, with the shipped default weights, on ../shared.
# Usage: bash benchmarks/downstream.sh [OUT]   (two lanes in parallel, one thread each; ~30 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/eval}
D=$(realpath ../shared/data)
M=$(realpath ../shared/models)
W=${WEIGHTS:-default}
C=$OUT/cache
export OMP_NUM_THREADS=1
mkdir -p "$OUT"

lane1() {
  "$PY" -m jdnet_plugin.evaluate --data "$D/rain100L_test" --weights "$W" --json "$OUT/rain100L.json" --csv "$OUT/rain100L.csv"
  for rain in light heavy; do
    "$PY" eval_tasks/detect.py --data "$D/coco128/coco128.yaml" --model "$M/yolov5n-coco.torchscript" --weights "$W" \
      --rain $rain --seed 0 --imgsz 640 --batch 1 --derain-clean --cache "$C" --out "$OUT/detect-coco128-$rain"
  done
}

lane2() {
  for rain in light heavy; do
    "$PY" eval_tasks/segment.py --images "$D/camvid_val/images" --masks "$D/camvid_val/masks" \
      --model "$M/espnet-cityscapes.torchscript" --num-classes 11 --class-map "$M/cityscapes_to_camvid.json" \
      --ignore-index 11 --rain $rain --seed 0 --weights "$W" --derain-clean --cache "$C" --out "$OUT/segment-camvid-$rain"
  done
  "$PY" eval_tasks/detect.py --source "$D/video/car-detection.mp4" --model "$M/yolov5n-coco.torchscript" --weights "$W" \
    --add-rain light --seed 0 --max-frames 120 --conf 0.1 --cache "$C" --out "$OUT/footage-car-light"
}

lane1 > "$OUT/lane1.log" 2>&1 &
lane2 > "$OUT/lane2.log" 2>&1 &
wait
echo "done: $OUT"
