#!/usr/bin/env bash
# The CPU side-by-side benchmark, in one run on one machine (issue 24):
#   * ours f32 and ours bf16 (`cargo bench --bench forward`, DIFFSTYLE_BENCH_PRECISION),
#     on the instruction set `DIFFSTYLE_CPU_ISA` forces or the best one;
#   * PyTorch f32 and PyTorch bf16 + channels_last, under no_grad
#     (tools/bench_torch_cpu.py --modes f32,bf16), and torch.mm's f32 / bf16 ceilings;
#   * models: tiny (the fixture), ddpm256 (google/ddpm-celebahq-256's architecture,
#     random weights, created once under $DIFFSTYLE_BENCH_DIR), conv3x3 (one 256-channel
#     64x64 3x3 convolution: the matrix-product speed alone);
#   * a fast-preset pair (50 + 50 steps) on the tiny model, ours bf16 vs ours f32
#     (`diffstyle bench --pairs fast`).
# Writes $OUT/bench_cpu.json, $OUT/bench_cpu.md (the table for BENCHMARKS.md) and
# $OUT/bench_cpu.png (a chart from the JSON), and prints the table.
#
# Usage: tools/bench_cpu.sh [MODEL ...]      (default: tiny ddpm256 conv3x3)
# Env:   OUT (target/bench-cpu), PY (python3 with torch, diffusers, safetensors, pillow),
#        DIFFSTYLE_BENCH_DIR (/tmp/diffstyle-bench), DIFFSTYLE_BENCH_MIN_SECS (3),
#        DIFFSTYLE_CPU_ISA (the instruction set of ours; default the best)
# Nothing else should run meanwhile: the load average is sampled and reported.
set -euo pipefail
cd "$(dirname "$0")/.."

export DIFFSTYLE_BENCH_DIR="${DIFFSTYLE_BENCH_DIR:-/tmp/diffstyle-bench}"
OUT="${OUT:-target/bench-cpu}"
PY="${PY:-python3}"
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(tiny ddpm256 conv3x3)
csv=$(IFS=,; echo "${models[*]}")
mkdir -p "$OUT"
raw="$OUT/raw"
rm -rf "$raw"
mkdir -p "$raw"
sampler=
trap '[ -z "$sampler" ] || kill "$sampler" 2>/dev/null' EXIT

sample_load() { while :; do cut -d' ' -f1 /proc/loadavg >>"$1"; sleep 5; done; }
phase() { # name, command...: runs it with the load sampled, output to $raw/name.txt
    local name=$1
    shift
    echo "== $name (load average before: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    sample_load "$raw/load_$name.txt" &
    sampler=$!
    "$@" | tee "$raw/$name.txt" >&2
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null || true
    sampler=
}

if [[ " ${models[*]} " == *" ddpm256 "* ]]; then
    "$PY" tools/bench_torch_cpu.py --create-only --dir "$DIFFSTYLE_BENCH_DIR"
fi
echo "== building" >&2
cargo build -q --release >&2
cargo bench -q --bench forward --no-run >&2

phase ours_f32 env DIFFSTYLE_BENCH_PRECISION=f32 cargo bench -q --bench forward -- "${models[@]}"
phase ours_bf16 env DIFFSTYLE_BENCH_PRECISION=bf16 cargo bench -q --bench forward -- "${models[@]}"
phase torch "$PY" tools/bench_torch_cpu.py --dir "$DIFFSTYLE_BENCH_DIR" --models "$csv" --modes f32,bf16 \
    --ceilings --min-seconds "${DIFFSTYLE_BENCH_MIN_SECS:-3}"
phase pairs target/release/diffstyle --device cpu --quiet bench --model tests/fixtures/method/model \
    --out-dir "$raw/pairs" --precisions f32,bf16 --batches 1 --pairs fast
target/release/diffstyle --device cpu info --model tests/fixtures/method/model | grep '^device:' >"$raw/device.txt"

"$PY" tools/bench_cpu_report.py "$raw" "$OUT"
