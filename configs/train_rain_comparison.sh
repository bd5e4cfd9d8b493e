#!/usr/bin/env bash
# Issue 15's equal-time comparison: jdnet-lite trained on the old `mixed` rain and on the new `broad` rain,
# same clean images (all of ../shared/data/clean but Kodak24), same recipe and steps, run side by side with
# one thread each so that both get the same machine for the same wall time. Rerunning resumes.
# Usage: bash configs/train_rain_comparison.sh [extra train flags for both runs]
set -euo pipefail
cd "$(dirname "$0")/.."
source configs/_clean_data.sh  # PY, SHARED, RUN, CLEAN, DATA and the validation pairs
mkdir -p "$(dirname "$RUN")"
for rain in mixed broad; do
  [ -f "$RUN-$rain/final.pt" ] || "$PY" -m jdnet_plugin.train --config "configs/rain-comparison-$rain.yaml" \
    --data "${DATA[@]}" --val "$RUN/val" --out "$RUN-$rain" --no-progress "$@" > "$RUN-$rain.log" 2>&1 &
done
wait
echo "done: $RUN-mixed/final.pt $RUN-broad/final.pt"
