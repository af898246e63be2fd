#!/usr/bin/env bash
# The evidence of EVALUATION.md, from our engine's own runs: samples of the model, the
# knob sweeps over the fixed 200-pair held-out sample (examples/emoji, written by
# tools/emoji/make_eval_set.py), `evaluate --truth` for every swept value, and the same
# for the untrained fixture model (the control that shows the figures can fail), and the
# same figures for two references taken as the output: the ground truth (what a perfect
# transfer scores on this sample) and the style image (what copying the style scores).
#
#   tools/emoji/evaluate.sh [MODEL] [OUT]     # defaults: models/emoji-32, target/emoji/eval
#
# Env: BIN (default target/release/diffstyle, built if missing), BASE (the knobs every
# run starts from, default "--preset fast"), SWEEPS (space-separated KNOB=V1,V2,...),
# CONTROL (the control model, default the fixture), CONTROL_SWEEPS (default: the gamma
# sweep only), BATCH (pairs side by side, default 16; results do not depend on it),
# SAMPLE_STEPS (DDIM steps of the samples, default 50), PARTS (which of "model control
# ceiling figures" to run, default all; the table covers whatever OUT holds).
# Writes under OUT: samples.png, one sweep-<knob>/ folder per sweep (sweep.png,
# sweep.json, one folder per value with its pairs, grid.png and truth.json), the same
# under control/, ceiling/ (the references scored as outputs: the truth, the style
# copy), figures/ (each sweep on 9 of the pairs, for the page), and summary.md +
# summary.json (every figure, one row per run; tools/emoji/eval_table.py).
# Python: standard library only.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL="${1:-models/emoji-32}"
OUT="${2:-target/emoji/eval}"
BIN="${BIN:-target/release/diffstyle}"
BASE="${BASE:---preset fast}"
SWEEPS="${SWEEPS:-gamma=0.2,0.4,0.6,0.8 t_edit=100,200,400,600,800 omega=0,0.3,0.6}"
CONTROL_SWEEPS="${CONTROL_SWEEPS:-gamma=0.2,0.4,0.6,0.8}"
BATCH="${BATCH:-16}"
PARTS="${PARTS:-model control ceiling figures}"
CONTROL="${CONTROL:-tests/fixtures/method/model}"
SAMPLE_STEPS="${SAMPLE_STEPS:-50}"
SET=examples/emoji
[ -x "$BIN" ] || cargo build --release
mapfile -t CONTENTS < "$SET/contents.txt"
mapfile -t STYLES < "$SET/styles.txt"
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*"; }

# shellcheck disable=SC2086
sweeps() {  # model, out dir, sweeps
  local m="$1" dir="$2" list="$3"
  for sw in $list; do
    local knob="${sw%%=*}"
    log "$m: sweep $sw"
    "$BIN" --quiet transfer --model "$m" --content "${CONTENTS[@]}" --style "${STYLES[@]}" \
      --out "$dir/sweep-$knob" --batch "$BATCH" $BASE --sweep "$sw" > "$dir/sweep-$knob.txt"
    for v in "$dir/sweep-$knob"/*/; do
      "$BIN" evaluate --content "${CONTENTS[@]}" --style "${STYLES[@]}" --results "$v" \
        --truth "$SET/truth.tsv" --out "${v%/}/truth.json" > "${v%/}/truth.txt"
    done
  done
}

# References scored like outputs, each pair's image under the name `transfer` gives that
# pair's output: the truth (the most any transfer can reach on this sample) and the
# style image itself (what copying the style, with no content at all, reaches).
ceiling() {  # out dir
  local root="$1/sweep-reference"
  mkdir -p "$root/truth" "$root/style-copy"
  while IFS=$'\t' read -r c s t; do
    case "$c" in "#"*|"") continue ;; esac
    local name="content_$(basename "$c" .png)_style_$(basename "$s" .png).png"
    cp "$SET/$t" "$root/truth/$name"
    cp "$s" "$root/style-copy/$name"
  done < "$SET/truth.tsv"
  for dir in "$root/truth" "$root/style-copy"; do
    "$BIN" evaluate --content "${CONTENTS[@]}" --style "${STYLES[@]}" --results "$dir" \
      --truth "$SET/truth.tsv" --out "$dir/truth.json" > "$dir/truth.txt"
  done
}

has() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if has model; then
  log "samples"
  "$BIN" --quiet sample --model "$MODEL" -n 64 --steps "$SAMPLE_STEPS" --seed 1 --out "$OUT/samples.png"
  t0=$(date +%s)
  sweeps "$MODEL" "$OUT" "$SWEEPS"
  log "model sweeps took $(( $(date +%s) - t0 )) s"
fi
if has control; then
  mkdir -p "$OUT/control"
  t0=$(date +%s)
  sweeps "$CONTROL" "$OUT/control" "$CONTROL_SWEEPS"
  log "control sweeps took $(( $(date +%s) - t0 )) s"
fi
if has figures; then
  # The sweeps again on a 3 x 3 subset (contents 1, 8, 15; styles 2, 5, 9 of the lists):
  # sweep.png grids small enough to read in EVALUATION.md.
  for sw in $SWEEPS; do
    log "figures: $sw"
    "$BIN" --quiet transfer --model "$MODEL" --content "${CONTENTS[0]}" "${CONTENTS[7]}" "${CONTENTS[14]}" \
      --style "${STYLES[1]}" "${STYLES[4]}" "${STYLES[8]}" --out "$OUT/figures/sweep-${sw%%=*}" \
      --batch "$BATCH" $BASE --sweep "$sw" > /dev/null
  done
fi
if has ceiling; then
  log "ceiling: the truth as output"
  ceiling "$OUT/ceiling"
fi
python3 tools/emoji/eval_table.py "$OUT" > "$OUT/summary.md"
cat "$OUT/summary.md"
