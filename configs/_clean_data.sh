# Sourced by the configs/train_*.sh scripts (from the repository root): the training folders (all of
# ../shared/data/clean but Kodak24) as DATA, the validation pairs in $RUN/val: Kodak24, never trained on, with
# storm rain, seed 1234 (monitoring and best.pt), and side_by_side to train several configs at once.
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared}
RUN=${RUN:-runs/rain-comparison}
CLEAN=$SHARED/data/clean
DATA=("$CLEAN/BSD300_nontest" "$CLEAN/CBSD68" "$CLEAN/CSet14" "$CLEAN/CSun_Hays80" "$CLEAN/Urban100" "$CLEAN/CamVid_0006R0")
if [ ! -d "$RUN/val/norain" ]; then
  "$PY" -m jdnet_plugin.synth "$CLEAN/Kodak24" --out "$RUN/val/rain" --preset storm --seed 1234 --quiet
  mkdir -p "$RUN/val" && cp -r "$CLEAN/Kodak24" "$RUN/val/norain"
fi
# side_by_side PREFIX NAME... [-- TRAIN FLAGS]: train configs/PREFIX-NAME.yaml into runs/PREFIX-NAME/ (log in
# runs/PREFIX-NAME.log) for every NAME at once, skipping those with a final.pt; rerunning resumes. Fails, after
# all have ended, naming the runs that failed.
side_by_side() {
  local prefix=$1 names=() pids=() failed=() name i
  shift
  while [ $# -gt 0 ] && [ "$1" != -- ]; do names+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  [ ${#names[@]} -gt 0 ] || { echo "side_by_side $prefix: no run named" >&2; return 2; }
  mkdir -p runs
  for name in "${names[@]}"; do
    if [ -f "runs/$prefix-$name/final.pt" ]; then pids+=(""); continue; fi
    "$PY" -m jdnet_plugin.train --config "configs/$prefix-$name.yaml" --data "${DATA[@]}" --val "$RUN/val" \
      --out "runs/$prefix-$name" --no-progress "$@" > "runs/$prefix-$name.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!names[@]}"; do
    [ -z "${pids[$i]}" ] || wait "${pids[$i]}" || failed+=("runs/$prefix-${names[$i]}.log")
  done
  [ ${#failed[@]} -eq 0 ] || { echo "failed (see ${failed[*]})" >&2; return 1; }
}
