#!/usr/bin/env bash
# Issue 16's broad-rain weights, from scratch, on all of ../shared/data/clean but Kodak24 (never a benchmark
# image): stage 1 is issue 15's broad comparison run (configs/rain-comparison-broad.yaml), stage 2 fine-tunes
# its final.pt (configs/broad-weights-stage2.yaml) and is shipped as jdnet-lite.broadrain; stage 3 fine-tunes
# that (configs/stage3-broad.yaml, the control of configs/train_stage3_comparison.sh) and is shipped as
# jdnet-lite.broadrain-s3 (the default until 2026-12-06); stage 4 fine-tunes that (configs/stage4-broad.yaml)
# and is shipped as jdnet-lite.broadrain-s4; stage 5 deepens stage 3 to jdnet-lite-deep (configs/stage5-deep.yaml), an experiment
# that lost on held-out rain, run only with STAGE5=1: its weights stay in runs/stage5-deep/ship.pt, not shipped;
# stage 6 fine-tunes stage 3 like stage 4 on `broad-balanced` rain (configs/stage6-balanced.yaml), run with STAGE6=1;
# stage 8 fine-tunes stage 3 like stage 4 with loss ssim+l1 (configs/stage8-l1.yaml) and is shipped as
# jdnet-lite.broadrain-s8 (its twin with another seed: configs/train_recipe_comparison.sh, STAGE=stage8); stage 9
# fine-tunes stage 8 with the same recipe (configs/stage9-control.yaml) and is shipped as jdnet-lite.broadrain-s9
# (its equal-time rival, widened to 24 channels: configs/train_recipe_comparison.sh, STAGE=stage9); stage 10
# fine-tunes stage 9 with the same recipe on broad-long rain (configs/stage10-long.yaml) and is shipped as
# jdnet-lite.broadrain-s10, the default before stage 13 (its control on broad rain: configs/train_recipe_comparison.sh, STAGE=stage10);
# stage 12 fine-tunes stage 10 on broad-slant rain (configs/stage12-slant.yaml) and is shipped as
# jdnet-lite.broadrain-s12, not the default (it lost CamVid recovery; its control: STAGE=stage11 there); stage 13,
# the average of the weights of stages 10 and 12, is shipped as jdnet-lite.broadrain-s13 (the default before stage
# 16); stage 16 fine-tunes stage 10 on broad-slant-torrent rain (configs/stage16-slant-torrent.yaml; shipped as
# jdnet-lite.broadrain-s16st, an ingredient), and the average of stages 10 and 16st is shipped as
# jdnet-lite.broadrain-s16 (the default before stage 17); stage 17 fine-tunes stage 16 on the same rain with a moving
# average of the weights (configs/stage17-soup-ema.yaml) and is shipped as jdnet-lite.broadrain-s17 (the default
# before stage 23); stage 21 fine-tunes stage 17 on broad-soft rain with two seeds (configs/stage21-soft*.yaml),
# and their average with stage 17 is shipped as jdnet-lite.broadrain-s21, not the default (for faint rain); stage 23
# does the same on broad-soft-long-slant rain (configs/stage23-soft-long-slant*.yaml), shipped as
# jdnet-lite.broadrain-s23 (the default before stage 24); stage 24 does the same from stage 23 on
# broad-soft-long-heavy rain (configs/stage24-soft-long-heavy*.yaml), shipped as jdnet-lite.broadrain-s24, the default.
# Rerunning resumes; a finished stage is skipped.
# Usage: bash configs/train_broad_weights.sh [extra train flags for every stage]
set -euo pipefail
cd "$(dirname "$0")/.."
source configs/_clean_data.sh  # PY, SHARED, RUN, CLEAN, DATA and the validation pairs
SHIP=${SHIP:-jdnet_plugin/weights/jdnet-lite-broadrain.pt}
[ -f "$RUN-broad/final.pt" ] || "$PY" -m jdnet_plugin.train --config configs/rain-comparison-broad.yaml \
  --data "${DATA[@]}" --val "$RUN/val" --out "$RUN-broad" --no-progress "$@"
# ship SRC SHIP LABEL: write SRC's model alone (no optimiser) as SHIP and print its sha256.
ship() {
  "$PY" -c "import sys; from jdnet_plugin import load_model, save_checkpoint; save_checkpoint(sys.argv[2], load_model(sys.argv[1]))" \
    "$1" "$2"
  echo "$3: $2 (sha256 $(sha256sum "$2" | cut -c1-64))"
}
# A fine-tuning stage: train CONFIG from INIT into OUT unless OUT/final.pt exists, then ship its final.pt as SHIP
# (no selection on validation).
stage() {
  local config=$1 init=$2 out=$3 ship=$4 label=$5
  shift 5
  [ -f "$out/final.pt" ] || "$PY" -m jdnet_plugin.train --config "$config" --init "$init" --data "${DATA[@]}" \
    --val "$RUN/val" --out "$out" --no-progress "$@"
  ship "$out/final.pt" "$ship" "$label"
}
# average OUT SHIP LABEL FILE... [--coefficients C...]: the (weighted) mean of the weights of FILE... written to OUT,
# then shipped as SHIP.
average() {
  local out=$1 ship=$2 label=$3
  shift 3
  "$PY" -m jdnet_plugin.average "$@" --out "$out"
  ship "$out" "$ship" "$label"
}
stage configs/broad-weights-stage2.yaml "$RUN-broad/final.pt" runs/broad-weights-stage2 "$SHIP" "broad weights" "$@"
SHIP3=${SHIP3:-jdnet_plugin/weights/jdnet-lite-broadrain-s3.pt}
stage configs/stage3-broad.yaml "$SHIP" runs/stage3-broad "$SHIP3" "stage-3 weights" "$@"
SHIP4=${SHIP4:-jdnet_plugin/weights/jdnet-lite-broadrain-s4.pt}
stage configs/stage4-broad.yaml "$SHIP3" runs/stage4-broad "$SHIP4" "stage-4 weights" "$@"
if [ "${STAGE5:-0}" = 1 ]; then
  stage configs/stage5-deep.yaml "$SHIP3" runs/stage5-deep runs/stage5-deep/ship.pt "stage-5 weights (jdnet-lite-deep)" "$@"
fi
if [ "${STAGE6:-0}" = 1 ]; then
  stage configs/stage6-balanced.yaml "$SHIP3" runs/stage6-balanced runs/stage6-balanced/ship.pt \
    "stage-6 weights (broad-balanced rain)" "$@"
fi
SHIP8=${SHIP8:-jdnet_plugin/weights/jdnet-lite-broadrain-s8.pt}
stage configs/stage8-l1.yaml "$SHIP3" runs/stage8-l1 "$SHIP8" "stage-8 weights" "$@"
SHIP9=${SHIP9:-jdnet_plugin/weights/jdnet-lite-broadrain-s9.pt}
stage configs/stage9-control.yaml "$SHIP8" runs/stage9-control "$SHIP9" "stage-9 weights" "$@"
SHIP10=${SHIP10:-jdnet_plugin/weights/jdnet-lite-broadrain-s10.pt}
stage configs/stage10-long.yaml "$SHIP9" runs/stage10-long "$SHIP10" "stage-10 weights" "$@"
SHIP12=${SHIP12:-jdnet_plugin/weights/jdnet-lite-broadrain-s12.pt}
stage configs/stage12-slant.yaml "$SHIP10" runs/stage12-slant "$SHIP12" "stage-12 weights (broad-slant rain)" "$@"
SHIP13=${SHIP13:-jdnet_plugin/weights/jdnet-lite-broadrain-s13.pt}
average runs/stage13-average.pt "$SHIP13" "stage-13 weights (the average of stages 10 and 12)" "$SHIP10" "$SHIP12"
SHIP16ST=${SHIP16ST:-jdnet_plugin/weights/jdnet-lite-broadrain-s16st.pt}
stage configs/stage16-slant-torrent.yaml "$SHIP10" runs/stage16-slant-torrent "$SHIP16ST" \
  "stage-16 ingredient (broad-slant-torrent rain)" "$@"
SHIP16=${SHIP16:-jdnet_plugin/weights/jdnet-lite-broadrain-s16.pt}
average runs/stage16-average.pt "$SHIP16" "stage-16 weights (the average of stages 10 and 16st)" "$SHIP10" "$SHIP16ST"
SHIP17=${SHIP17:-jdnet_plugin/weights/jdnet-lite-broadrain-s17.pt}
stage configs/stage17-soup-ema.yaml "$SHIP16" runs/stage17-soup-ema "$SHIP17" \
  "stage-17 weights (stage 16 fine-tuned with a moving average of the weights)" "$@"
# seeds_soup PREFIX NAME SECOND BASE SHIP LABEL: BASE fine-tuned by configs/PREFIX-NAME.yaml and by its second seed,
# configs/PREFIX-NAME-SECOND.yaml; both averaged with BASE itself (coefficients 2 1 1) into runs/PREFIX-soup.pt,
# shipped as SHIP.
seeds_soup() {
  local prefix=$1 name=$2 second=$3 base=$4 ship=$5 label=$6 run
  shift 6
  for run in "$prefix-$name" "$prefix-$name-$second"; do
    stage "configs/$run.yaml" "$base" "runs/$run" "runs/$run/ship.pt" "run $run" "$@"
  done
  average "runs/$prefix-soup.pt" "$ship" "$label" "$base" "runs/$prefix-$name/final.pt" \
    "runs/$prefix-$name-$second/final.pt" --coefficients 2 1 1
}
# Stage 21 (not the default; for faint rain): on broad-soft rain, shipped as jdnet-lite.broadrain-s21.
SHIP21=${SHIP21:-jdnet_plugin/weights/jdnet-lite-broadrain-s21.pt}
seeds_soup stage21 soft seed26 "$SHIP17" "$SHIP21" \
  "stage-21 weights (stage 17 and both stage-21 runs, 2:1:1; for faint rain)" "$@"
# Stage 23: on broad-soft-long-slant rain, shipped as jdnet-lite.broadrain-s23.
SHIP23=${SHIP23:-jdnet_plugin/weights/jdnet-lite-broadrain-s23.pt}
seeds_soup stage23 soft-long-slant seed30 "$SHIP17" "$SHIP23" \
  "stage-23 weights (stage 17 and both stage-23 runs, 2:1:1)" "$@"
# Stage 24: stage 23 on broad-soft-long-heavy rain, shipped as jdnet-lite.broadrain-s24, the default.
SHIP24=${SHIP24:-jdnet_plugin/weights/jdnet-lite-broadrain-s24.pt}
seeds_soup stage24 soft-long-heavy seed32 "$SHIP23" "$SHIP24" \
  "stage-24 weights (stage 23 and both stage-24 runs, 2:1:1; the default)" "$@"
