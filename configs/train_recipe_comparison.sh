#!/usr/bin/env bash
# Issue 16, stage 7: the recipe candidates of configs/stage7-*.yaml (control, l1, crop248, control-seed8, dry30,
# l1-seed8) fine-tuned from the default side by side, one thread each, into runs/stage7-NAME/ (CANDIDATES="a b"
# picks some; they were run as three batches: "control l1 crop248", "control-seed8 dry30", "l1-seed8"). Then, each:
#   python eval_tasks/generalization.py --weights runs/stage7-NAME/final.pt --out runs/gen-stage7-NAME --cache runs/gen-cache
# Usage: bash configs/train_recipe_comparison.sh [extra train flags for every run]. Rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
source configs/_clean_data.sh  # PY, SHARED, RUN, CLEAN, DATA and the validation pairs
mkdir -p runs
for name in ${CANDIDATES:-control l1 crop248 control-seed8 dry30 l1-seed8}; do
  [ -f "runs/stage7-$name/final.pt" ] || "$PY" -m jdnet_plugin.train --config "configs/stage7-$name.yaml" \
    --data "${DATA[@]}" --val "$RUN/val" --out "runs/stage7-$name" --no-progress "$@" > "runs/stage7-$name.log" 2>&1 &
done
wait
echo "done: runs/stage7-*/final.pt"
