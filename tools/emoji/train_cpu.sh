#!/usr/bin/env bash
# The emoji model's CPU training (issue 23), in resumable chunks of CHUNK steps, niced,
# until a wall-clock deadline. Each chunk resumes from STATE (the committed training
# state: a diffusers folder with the EMA weights, plus the online weights, AdamW moments,
# RNG state, options and loss history), trains CHUNK more steps into a fresh folder, then
# replaces STATE with it (rename), so a chunk killed midway loses only itself. A chunk
# from a given state and step count is deterministic (same threads, same PyTorch).
#
#   PY=/path/to/venv/bin/python tools/emoji/train_cpu.sh --until 06:20   # resume or start
#   ... --minutes 120                                                     # or a duration
#
# The first chunk (no STATE yet) starts the network of the pilot's choice
# (tools/README.md); later chunks take the training options from train_state.json and
# choose bf16 autocast by the CPU they run on (EXTRA_OPTS overrides either). Commit
# STATE at the end of a session: `git add models/emoji-32-train && git commit`.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p "$(dirname "${STATE:-models/emoji-32-train}")"
PY="${PY:-python3}"
STATE="${STATE:-models/emoji-32-train}"
CHUNK="${CHUNK:-1500}"
DATA="${DATA:-target/emoji/train.npz}"
# The network and recipe chosen from the pilot (tools/README.md).
FIRST_OPTS="${FIRST_OPTS:---size 32 --channels 32,64,64 --layers 1 --attn-levels 2 --batch 64 \
--lr 3e-4 --warmup 500 --ema 0.9995 --min-snr 5 --total-steps 36000 --lr-floor 0.1 \
--bf16 on --channels-last on --compile --save-adam --log-every 100}"

deadline=""
case "${1:-}" in
--until) deadline=$(date -d "$2" +%s) ;;
--minutes) deadline=$(( $(date +%s) + ${2%.*} * 60 )) ;;
*) echo "usage: $0 --until HH:MM | --minutes N" >&2; exit 2 ;;
esac
[ -f "$DATA" ] || { echo "$DATA missing: run tools/emoji/build_dataset.sh first" >&2; exit 1; }

last_chunk_s=0
while :; do
  now=$(date +%s)
  # Start a chunk only if it is expected to finish (with a quarter to spare).
  if [ $(( now + last_chunk_s * 5 / 4 )) -ge "$deadline" ]; then
    echo "[$(date +%T)] deadline: no time for another chunk (last took ${last_chunk_s} s)"
    break
  fi
  tmp="$STATE.next"
  rm -rf "$tmp"
  if [ -f "$STATE/train_state.json" ]; then
    read -r step total < <("$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); \
print(s['step'], s['options'].get('total_steps') or 0)" "$STATE/train_state.json")
    # The cosine schedule ends at total_steps: past it the run is finished, not extended.
    if [ "$total" -gt 0 ] && [ "$step" -ge "$total" ]; then
      echo "[$(date +%T)] finished: step $step of $total"
      break
    fi
    # shellcheck disable=SC2206
    opts=(--resume "$STATE" ${EXTRA_OPTS:-})
  else
    step=0
    # shellcheck disable=SC2206
    opts=($FIRST_OPTS)
  fi
  target=$(( step + CHUNK ))
  [ "${total:-0}" -gt 0 ] && [ "$target" -gt "$total" ] && target=$total
  echo "[$(date +%T)] chunk: steps $step -> $target"
  t0=$(date +%s)
  nice -n 19 "$PY" tools/emoji/train.py --data "$DATA" --out "$tmp" --steps "$target" "${opts[@]}" \
    > "$tmp.log" 2>&1 || { echo "chunk failed, see $tmp.log" >&2; tail -20 "$tmp.log" >&2; exit 1; }
  last_chunk_s=$(( $(date +%s) - t0 ))
  mkdir -p "$STATE.logs"
  mv "$tmp.log" "$STATE.logs/chunk-$(printf %06d "$target").log"
  rm -rf "$STATE.old"
  [ -d "$STATE" ] && mv "$STATE" "$STATE.old"
  mv "$tmp" "$STATE"
  rm -rf "$STATE.old"
  grep -h "step .* loss" "$STATE.logs/chunk-$(printf %06d "$target").log" | tail -1
done
