#!/usr/bin/env bash
# Issue 16, stages 7 to 12: recipe candidates (configs/STAGE-NAME.yaml) side by side, one thread each, into
# runs/STAGE-NAME/. Stage 7 (the default): 600 steps from stage 3, one change each (control, l1, crop248,
# control-seed8, dry30, l1-seed8, crop176), run as four batches: CANDIDATES="control l1 crop248", "control-seed8
# dry30", "l1-seed8", "crop176" (alone, with --threads 2). Stage 8: STAGE=stage8 (l1, l1-seed8: stage 4's 2000
# steps with loss ssim+l1, two seeds). Stage 9: STAGE=stage9 (control, wide24: 2000 more steps of stage 8's
# recipe from stage 8 against jdnet-lite widened to 24 channels for the same wall time). Stage 10: STAGE=stage10
# (control, long: 1800 more steps of the recipe from stage 9 on `broad` and on `broad-long` rain; long-seed11, alone
# with --threads 2: `long` with another seed). Stage 11: STAGE=stage11 (control, sharp: 1500 more steps of stage
# 10's recipe from stage 10 on `broad-long` and on `broad-sharp`, the same rain through a sharpening camera). Stage
# 12: STAGE=stage12 (slant: stage 11's control on `broad-slant`, that control its own; slant-seed13: its second
# seed, run with CANDIDATES=slant-seed13). Stage 14: STAGE=stage14 (torrent: stage 12's recipe on `broad-torrent`, an
# ingredient of an average). Stage 16: STAGE=stage16 (slant-torrent: the same on `broad-slant-torrent`;
# slant-torrent-seed17: its second seed, run with CANDIDATES=slant-torrent-seed17). Stage 17: STAGE=stage17
# (soup-ema: the same recipe from stage 16, the default, with a moving average of the weights; soup-ema-seed19: its
# second seed, run with CANDIDATES=soup-ema-seed19). Stage 18: STAGE=stage18 (crop192: stage 17's recipe from stage
# 17 with 192x192 crops in batches of 4, 1200 steps). Stage 19: STAGE=stage19 (wide32, wide32-seed22: stage 17 widened to
# 32 channels, then stage 17's recipe, 900 steps, two seeds). Stage 20: STAGE=stage20 (over, over-seed24: stage 17's
# recipe from stage 17 on `broad-over`, streaks that occlude the scene on half the images, two seeds). Stage 21:
# STAGE=stage21 (soft, soft-seed26: the same on `broad-soft`, faint defocused streaks and fine rain added; the
# candidate is the average of stage 17 and both runs: python -m jdnet_plugin.average jdnet-lite.broadrain-s17
# runs/stage21-soft/final.pt runs/stage21-soft-seed26/final.pt --coefficients 2 1 1 --out runs/stage21-soup.pt).
# Stage 22: STAGE=stage22 (soft-long, soft-long-seed28: the same on `broad-soft-long`, `long` added; averaged alike
# into runs/stage22-soup.pt). Stage 23: STAGE=stage23 (soft-long-slant, soft-long-slant-seed30: the same on
# `broad-soft-long-slant`, `slant` and `torrent` brought back to stage 17's shares; averaged alike into
# runs/stage23-soup.pt). Stage 24: STAGE=stage24 (soft-long-heavy, soft-long-heavy-seed32: the same from stage 23 on
# `broad-soft-long-heavy`, the heavy end brought back to stage 17's shares; averaged with stage 23 alike into
# runs/stage24-soup.pt). Stage 25: STAGE=stage25 (render-scale, render-scale-seed34: the same from stage 24 with the
# rain drawn at 1 to 2 times the crop's scale and shrunk to it; averaged with stage 24 alike into runs/stage25-soup.pt).
# Stage 26: STAGE=stage26 (light, light-seed36: the same from stage 24 on `broad-light`, `light` rain on a quarter of
# the images; averaged with stage 24 alike into runs/stage26-soup.pt).
# Then, each:
#   python eval_tasks/generalization.py --weights runs/STAGE-NAME/final.pt --out runs/gen-STAGE-NAME --cache runs/gen-cache
# Usage: [STAGE=stage11] [CANDIDATES="a b"] bash configs/train_recipe_comparison.sh [extra train flags for every run].
# Rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
source configs/_clean_data.sh  # PY, SHARED, RUN, CLEAN, DATA, the validation pairs and side_by_side
STAGE=${STAGE:-stage7}
case $STAGE in
  stage7) default="control l1 crop248 control-seed8 dry30 l1-seed8 crop176" ;;
  stage8) default="l1 l1-seed8" ;;
  stage9) default="control wide24" ;;
  stage10) default="control long" ;;
  stage11) default="control sharp" ;;
  stage12) default="slant" ;;
  stage14) default="torrent" ;;
  stage16) default="slant-torrent" ;;
  stage17) default="soup-ema" ;;
  stage18) default="crop192" ;;
  stage19) default="wide32 wide32-seed22" ;;
  stage20) default="over over-seed24" ;;
  stage21) default="soft soft-seed26" ;;
  stage22) default="soft-long soft-long-seed28" ;;
  stage23) default="soft-long-slant soft-long-slant-seed30" ;;
  stage24) default="soft-long-heavy soft-long-heavy-seed32" ;;
  stage25) default="render-scale render-scale-seed34" ;;
  stage26) default="light light-seed36" ;;
  *) echo "STAGE must be stage7 to stage12, stage14, stage16 to stage26, not '$STAGE'" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086  # CANDIDATES is a list of names
side_by_side "$STAGE" ${CANDIDATES:-$default} -- "$@"
echo "done: runs/$STAGE-*/final.pt"
