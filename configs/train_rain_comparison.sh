#!/usr/bin/env bash
# Issue 15's equal-time comparison: jdnet-lite from scratch on the old `mixed` rain and on the new broad rain, same
# clean images (all of ../shared/data/clean but Kodak24), same recipe and steps, run side by side with one thread
# each so that both get the same machine for the same wall time. Rerunning resumes.
#   round 1 (default): configs/rain-comparison-{mixed,broad}.yaml (negative SSIM, 96x96 crops) into
#     runs/rain-comparison-{mixed,broad}/
#   ROUND=l1: configs/rain-comparison-l1-{mixed,broad-long}.yaml (ssim+l1, 128x128 crops) into
#     runs/rain-comparison-l1-{mixed,broad-long}/
#   ROUND=r3: configs/rain-comparison-r3-{mixed,soft-long-heavy}.yaml (round 2's recipe; the rain of the default since
#     stage 24, broad-soft-long-heavy) into runs/rain-comparison-r3-{mixed,soft-long-heavy}/
#   ROUND=r4: configs/rain-comparison-r4-{light,even-light}.yaml (round 3's recipe; broad-soft-long-heavy with `light`
#     on a quarter or half of the images; compared against round 3's mixed run) into runs/rain-comparison-r4-*/
# Usage: [ROUND=l1|r3|r4] bash configs/train_rain_comparison.sh [extra train flags for both runs]
set -euo pipefail
cd "$(dirname "$0")/.."
source configs/_clean_data.sh  # PY, SHARED, RUN, CLEAN, DATA, the validation pairs and side_by_side
case ${ROUND:-1} in
  1) side_by_side rain-comparison mixed broad -- "$@" ;;
  l1) side_by_side rain-comparison-l1 mixed broad-long -- "$@" ;;
  r3) side_by_side rain-comparison-r3 mixed soft-long-heavy -- "$@" ;;
  r4) side_by_side rain-comparison-r4 light even-light -- "$@" ;;
  *) echo "ROUND must be 1, l1, r3 or r4, not '$ROUND'" >&2; exit 2 ;;
esac
echo "done"
