#!/usr/bin/env bash
# Reproduces the shipped default weights in three stages (each fine-tunes the previous stage's best.pt).
# Usage: bash configs/train_default_weights.sh [extra train flags, given to both stages]
# Rerunning resumes each stage from its latest.pt; a finished stage is skipped.
# Needs ../shared/data/clean (see ../shared/data/SOURCES.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared}
RUN=${RUN:-runs/default-weights}
CLEAN=$SHARED/data/clean
DATA=("$CLEAN/CBSD68" "$CLEAN/CSet14" "$CLEAN/CSun_Hays80")

# Held-out validation pairs: Kodak24 (not used for training) with mixed rain, fixed seed.
if [ ! -d "$RUN/val/norain" ]; then
  "$PY" -m jdnet_plugin.synth "$CLEAN/Kodak24" --out "$RUN/val/rain" --preset mixed --seed 1234 --quiet
  mkdir -p "$RUN/val" && cp -r "$CLEAN/Kodak24" "$RUN/val/norain"
fi

[ -f "$RUN/final.pt" ] || "$PY" -m jdnet_plugin.train --config configs/default-weights.yaml \
  --data "${DATA[@]}" --val "$RUN/val" --out "$RUN" "$@"
[ -f "$RUN-stage2/final.pt" ] || "$PY" -m jdnet_plugin.train --config configs/default-weights-stage2.yaml \
  --init "$RUN/best.pt" --data "${DATA[@]}" --val "$RUN/val" --out "$RUN-stage2" "$@"
[ -f "$RUN-stage3/final.pt" ] || "$PY" -m jdnet_plugin.train --config configs/default-weights-stage3.yaml \
  --init "$RUN-stage2/best.pt" --data "${DATA[@]}" --val "$RUN/val" --out "$RUN-stage3" "$@"
echo "default weights: $RUN-stage3/best.pt"
