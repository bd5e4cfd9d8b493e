#!/usr/bin/env bash
# Issue 16's broad-rain weights, from scratch, on all of ../shared/data/clean but Kodak24 (never a benchmark
# image): stage 1 is issue 15's broad comparison run (configs/rain-comparison-broad.yaml), stage 2 fine-tunes
# its final.pt (configs/broad-weights-stage2.yaml) and is shipped as jdnet-lite.broadrain; stage 3 fine-tunes
# that (configs/stage3-broad.yaml, the control of configs/train_stage3_comparison.sh) and is shipped as
# jdnet-lite.broadrain-s3, the default; stage 4 fine-tunes that (configs/stage4-broad.yaml) and is shipped as
# jdnet-lite.broadrain-s4. Rerunning resumes; a finished stage is skipped.
# Usage: bash configs/train_broad_weights.sh [extra train flags for both stages]
set -euo pipefail
cd "$(dirname "$0")/.."
source configs/_clean_data.sh  # PY, SHARED, RUN, CLEAN, DATA and the validation pairs
SHIP=${SHIP:-jdnet_plugin/weights/jdnet-lite-broadrain.pt}
[ -f "$RUN-broad/final.pt" ] || "$PY" -m jdnet_plugin.train --config configs/rain-comparison-broad.yaml \
  --data "${DATA[@]}" --val "$RUN/val" --out "$RUN-broad" --no-progress "$@"
[ -f "runs/broad-weights-stage2/final.pt" ] || "$PY" -m jdnet_plugin.train --config configs/broad-weights-stage2.yaml \
  --init "$RUN-broad/final.pt" --data "${DATA[@]}" --val "$RUN/val" --out runs/broad-weights-stage2 --no-progress "$@"
# The shipped file: the model alone (no optimiser), from stage 2's final.pt (no selection on validation).
"$PY" -c "import sys; from jdnet_plugin import load_model, save_checkpoint; save_checkpoint(sys.argv[2], load_model(sys.argv[1]))" \
  runs/broad-weights-stage2/final.pt "$SHIP"
echo "broad weights: $SHIP (sha256 $(sha256sum "$SHIP" | cut -c1-64))"
SHIP3=${SHIP3:-jdnet_plugin/weights/jdnet-lite-broadrain-s3.pt}
[ -f "runs/stage3-broad/final.pt" ] || "$PY" -m jdnet_plugin.train --config configs/stage3-broad.yaml \
  --init "$SHIP" --data "${DATA[@]}" --val "$RUN/val" --out runs/stage3-broad --no-progress "$@"
"$PY" -c "import sys; from jdnet_plugin import load_model, save_checkpoint; save_checkpoint(sys.argv[2], load_model(sys.argv[1]))" \
  runs/stage3-broad/final.pt "$SHIP3"
echo "stage-3 weights (the default): $SHIP3 (sha256 $(sha256sum "$SHIP3" | cut -c1-64))"
SHIP4=${SHIP4:-jdnet_plugin/weights/jdnet-lite-broadrain-s4.pt}
[ -f "runs/stage4-broad/final.pt" ] || "$PY" -m jdnet_plugin.train --config configs/stage4-broad.yaml \
  --init "$SHIP3" --data "${DATA[@]}" --val "$RUN/val" --out runs/stage4-broad --no-progress "$@"
"$PY" -c "import sys; from jdnet_plugin import load_model, save_checkpoint; save_checkpoint(sys.argv[2], load_model(sys.argv[1]))" \
  runs/stage4-broad/final.pt "$SHIP4"
echo "stage-4 weights: $SHIP4 (sha256 $(sha256sum "$SHIP4" | cut -c1-64))"
