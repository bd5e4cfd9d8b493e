#!/usr/bin/env bash
# Issue 16, stage 3: two equal-time candidates fine-tuned from the shipped jdnet-lite.broadrain, side by side
# with one thread each (configs/stage3-broad.yaml = control, configs/stage3-broad-fine.yaml = rebalanced rain).
# Then: python eval_tasks/generalization.py --weights runs/stage3-X/final.pt --out runs/gen-stage3-X
# Usage: bash configs/train_stage3_comparison.sh [extra train flags for both runs]. Rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
source configs/_clean_data.sh  # PY, SHARED, RUN, CLEAN, DATA, the validation pairs and side_by_side
side_by_side stage3 broad broad-fine -- "$@"
echo "done: runs/stage3-broad/final.pt runs/stage3-broad-fine/final.pt"
