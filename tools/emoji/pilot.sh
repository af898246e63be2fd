#!/usr/bin/env bash
# The CPU training pilot of issue 23: training images/s of tools/emoji/train.py for a few
# network sizes and PyTorch CPU paths, at 32 px, batch 64, on this machine's cores.
# Each case trains STEPS steps from scratch and reports the rate of the last LOG steps
# (the first chunk holds the warm-up: allocator, oneDNN primitive creation, compile).
#
#   PY=/path/to/venv/bin/python tools/emoji/pilot.sh [out_dir]   # default target/emoji/pilot
#
# Writes one log per case and appends to pilot.tsv (case, parameters, images/s).
# ONLY=substring runs the matching cases only.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-python3}"
OUT="${1:-target/emoji/pilot}"
STEPS="${STEPS:-60}"
LOG="${LOG:-20}"
DATA="${DATA:-target/emoji/train.npz}"
mkdir -p "$OUT"
# name | train.py options
CASES=(
  "s1.1M-f32-nchw|--channels 32,64,64 --attn-levels 2 --bf16 off --channels-last off"
  "s1.1M-f32-cl|--channels 32,64,64 --attn-levels 2 --bf16 off --channels-last on"
  "s1.1M-bf16-cl|--channels 32,64,64 --attn-levels 2 --bf16 on --channels-last on"
  "s1.1M-bf16-cl-compile|--channels 32,64,64 --attn-levels 2 --bf16 on --channels-last on --compile"
  "s1.1M-f32-cl-compile|--channels 32,64,64 --attn-levels 2 --bf16 off --channels-last on --compile"
  "s1.6M-bf16-cl-compile|--channels 32,64,64 --layers 2 --attn-levels 2 --bf16 on --channels-last on --compile"
  "s2.7M-bf16-cl-compile|--channels 32,64,128 --attn-levels 2 --bf16 on --channels-last on --compile"
  "s4.4M-bf16-cl-compile|--channels 64,128,128 --attn-levels 2 --bf16 on --channels-last on --compile"
)
[ -f "$OUT/pilot.tsv" ] || printf 'case\tparams_M\timg_per_s\n' > "$OUT/pilot.tsv"
for c in "${CASES[@]}"; do
  name="${c%%|*}"; opts="${c#*|}"
  if [ -n "${ONLY:-}" ] && [[ "$name" != *"$ONLY"* ]]; then continue; fi
  # shellcheck disable=SC2086
  "$PY" tools/emoji/train.py --data "$DATA" --size 32 --batch 64 --steps "$STEPS" \
      --log-every "$LOG" --out "$OUT/run-$name" $opts > "$OUT/$name.log" 2>&1
  rate=$(grep -o '[0-9]* img/s' "$OUT/$name.log" | tail -1 | cut -d' ' -f1)
  params=$(grep -o '([0-9.]* M)' "$OUT/$name.log" | head -1 | tr -d '(M )')
  printf '%s\t%s\t%s\n' "$name" "$params" "$rate" | tee -a "$OUT/pilot.tsv"
  rm -rf "$OUT/run-$name"
done
