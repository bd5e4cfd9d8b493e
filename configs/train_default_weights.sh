#!/usr/bin/env bash
# Reproduces the shipped default weights. Usage: bash configs/train_default_weights.sh [extra train flags]
# Rerunning resumes from $RUN/latest.pt. Needs ../shared/data/clean (see ../shared/data/SOURCES.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared}
RUN=${RUN:-runs/default-weights}
CLEAN=$SHARED/data/clean

# Held-out validation pairs: Kodak24 (not used for training) with mixed rain, fixed seed.
if [ ! -d "$RUN/val/norain" ]; then
  "$PY" -m jdnet_plugin.synth "$CLEAN/Kodak24" --out "$RUN/val/rain" --preset mixed --seed 1234 --quiet
  mkdir -p "$RUN/val" && cp -r "$CLEAN/Kodak24" "$RUN/val/norain"
fi

exec "$PY" -m jdnet_plugin.train --config configs/default-weights.yaml \
  --data "$CLEAN/CBSD68" "$CLEAN/CSet14" "$CLEAN/CSun_Hays80" \
  --val "$RUN/val" --out "$RUN" "$@"
