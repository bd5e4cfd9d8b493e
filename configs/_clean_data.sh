# Sourced by train_rain_comparison.sh and train_broad_weights.sh (from the repository root): the training
# folders (all of ../shared/data/clean but Kodak24) as DATA, and the validation pairs in $RUN/val: Kodak24,
# never trained on, with storm rain, seed 1234 (monitoring and best.pt).
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared}
RUN=${RUN:-runs/rain-comparison}
CLEAN=$SHARED/data/clean
DATA=("$CLEAN/BSD300_nontest" "$CLEAN/CBSD68" "$CLEAN/CSet14" "$CLEAN/CSun_Hays80" "$CLEAN/Urban100" "$CLEAN/CamVid_0006R0")
if [ ! -d "$RUN/val/norain" ]; then
  "$PY" -m jdnet_plugin.synth "$CLEAN/Kodak24" --out "$RUN/val/rain" --preset storm --seed 1234 --quiet
  mkdir -p "$RUN/val" && cp -r "$CLEAN/Kodak24" "$RUN/val/norain"
fi
