#!/usr/bin/env bash
# The evidence of EVALUATION.md, from our engine's own runs: samples of the model, the
# knob sweeps over the fixed 200-pair held-out sample (examples/emoji, written by
# tools/emoji/make_eval_set.py), `evaluate --truth` for every swept value, and the same
# for the untrained fixture model (the control that shows the figures can fail).
#
#   tools/emoji/evaluate.sh [MODEL] [OUT]     # defaults: models/emoji-32, target/emoji/eval
#
# Env: BIN (default target/release/diffstyle, built if missing), BASE (the knobs every
# run starts from, default "--preset fast"), SWEEPS (space-separated KNOB=V1,V2,...),
# CONTROL (the control model, default the fixture), SAMPLE_STEPS (DDIM steps of
# the samples, default 50). Writes under OUT: samples.png, one sweep-<knob>/ folder per
# sweep (sweep.png, sweep.json, one folder per value with its pairs, grid.png and
# truth.json), the same under control/, and summary.md + summary.json (every figure,
# one row per run; tools/emoji/eval_table.py). Python: standard library only.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL="${1:-models/emoji-32}"
OUT="${2:-target/emoji/eval}"
BIN="${BIN:-target/release/diffstyle}"
BASE="${BASE:---preset fast}"
SWEEPS="${SWEEPS:-gamma=0.2,0.4,0.6,0.8 t_edit=200,400,600 omega=0,0.3,0.6}"
CONTROL="${CONTROL:-tests/fixtures/method/model}"
SAMPLE_STEPS="${SAMPLE_STEPS:-50}"
SET=examples/emoji
[ -x "$BIN" ] || cargo build --release
mapfile -t CONTENTS < "$SET/contents.txt"
mapfile -t STYLES < "$SET/styles.txt"
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*"; }

# shellcheck disable=SC2086
sweeps() {  # model, out dir
  local m="$1" dir="$2"
  for sw in $SWEEPS; do
    local knob="${sw%%=*}"
    log "$m: sweep $sw"
    "$BIN" --quiet transfer --model "$m" --content "${CONTENTS[@]}" --style "${STYLES[@]}" \
      --out "$dir/sweep-$knob" $BASE --sweep "$sw" > "$dir/sweep-$knob.txt"
    for v in "$dir/sweep-$knob"/*/; do
      "$BIN" evaluate --content "${CONTENTS[@]}" --style "${STYLES[@]}" --results "$v" \
        --truth "$SET/truth.tsv" --out "${v%/}/truth.json" > "${v%/}/truth.txt"
    done
  done
}

log "samples"
"$BIN" --quiet sample --model "$MODEL" -n 64 --steps "$SAMPLE_STEPS" --seed 1 --out "$OUT/samples.png"
t0=$(date +%s)
sweeps "$MODEL" "$OUT"
log "model sweeps took $(( $(date +%s) - t0 )) s"
mkdir -p "$OUT/control"
sweeps "$CONTROL" "$OUT/control"
python3 tools/emoji/eval_table.py "$OUT" > "$OUT/summary.md"
cat "$OUT/summary.md"
