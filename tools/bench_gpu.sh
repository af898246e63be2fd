#!/usr/bin/env bash
# The whole performance table of issue 5 in ONE device call: ours (`diffstyle bench`)
# and the PyTorch baselines (tools/bench_torch_gpu.py) on the same GPU, the same
# random-weight DDPM-256 model and the same inputs, merged by tools/bench_report.py
# into results.json and a BENCHMARKS.md section.
#
# Prepare here (cargo is not on the device machine): tools/prepare_gpu_check.sh
# (release binary + test binaries under target/gpu-check, wheels under target/wheels).
# Run there from the repository root, carrying both:
#   device run: carry ["target/gpu-check.tar.xz", "target/wheels"],
#               command "bash tools/bench_gpu.sh", timeout_s 600
# Then copy $OUT/results.json to benches/results.json and paste $OUT/BENCHMARKS_gpu.md
# into BENCHMARKS.md. Everything else it made is in $OUT/bench.tar.gz.
#
# Env: OUT (default /tmp/bench), BENCH_QUICK=1 (batch 1 only, fast pair only: a smoke
# run), OURS_BUDGET_S / TORCH_BUDGET_S (time limits of ours, default 240 s, and of the
# baselines, default 330 s).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bench}
mkdir -p "$OUT"
B=target/gpu-check
# The binaries travel packed (tools/prepare_gpu_check.sh).
[ -d target/gpu-check ] || tar -xJf target/gpu-check.tar.xz -C target
LOG="$OUT/log.txt"
log() { echo "== $(date -u +%T) $*" | tee -a "$LOG"; }
run() { log "$*"; "$@" 2>&1 | tee -a "$LOG"; return "${PIPESTATUS[0]}"; }

if [ -f "$B/COMMIT" ]; then COMMIT=$(tr '\n' ' ' <"$B/COMMIT" | sed 's/ *$//'); else COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown); fi
DATE=$(date -u +%F)
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    BATCHES=1; PAIRS=fast; THROUGHPUT=8; PAIR_PRECISIONS=bf16
else
    # f32 runs the forwards only: its pairs would take minutes of the lease.
    BATCHES=1,4,16; PAIRS=in-domain,fast; THROUGHPUT=8,32; PAIR_PRECISIONS=bf16,f16
fi
MODEL=/tmp/ddpm256.safetensors

run nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
log "commit $COMMIT, date $DATE"
run "$B/diffstyle" random-model --arch ddpm-256 --out "$MODEL" || exit 1

log "ours"
run timeout "${OURS_BUDGET_S:-240}" "$B/diffstyle" --device cuda --quiet bench --model "$MODEL" --arch ddpm-256 \
    --out-dir "$OUT/ours" --batches "$BATCHES" --pairs "$PAIRS" --throughput "$THROUGHPUT" \
    --precisions bf16,f16,f32 --pair-precisions "$PAIR_PRECISIONS" --profile \
    --content examples/content.png --style examples/style.png
ours_rc=$?

log "baselines"
bash tools/fetch_wheels.sh --install 2>&1 | tee -a "$LOG"
# torch.compile(max-autotune) takes minutes per batch size: batch 1 only. torch.json is
# rewritten after every row, so a run cut by the timeout keeps what it measured.
run timeout "${TORCH_BUDGET_S:-330}" python3 tools/bench_torch_gpu.py --model "$MODEL" --arch ddpm-256 \
    --ours "$OUT/ours" --out "$OUT/torch.json" --batches "$BATCHES" --compile-batches 1 \
    --pairs "$PAIRS" --throughput "$THROUGHPUT" --save-images "$OUT/torch_images"
torch_rc=$?

log "report (ours rc $ours_rc, baselines rc $torch_rc)"
run python3 tools/bench_report.py "$OUT/ours" "$OUT/torch.json" --commit "$COMMIT" --date "$DATE" \
    --command "tools/bench_gpu.sh (BENCH_QUICK=${BENCH_QUICK:-0})" \
    --results "$OUT/results.json" --markdown "$OUT/BENCHMARKS_gpu.md"
tar -czf "$OUT/bench.tar.gz" -C "$OUT" ours torch.json torch_images log.txt 2>/dev/null
cat "$OUT/BENCHMARKS_gpu.md" 2>/dev/null | tail -40
