#!/usr/bin/env bash
# Everything a lent GPU is for, in ONE device call that fits a 10-minute command:
# the real-GPU tests (tools/gpu_check.sh's first part), the kernel micro-benchmarks
# (`diffstyle kernels`), then the benchmark
# (tools/bench_gpu.sh: ours and the PyTorch baselines), each under its own time limit.
#
# Here:  tools/prepare_gpu_check.sh
# There: device run, carry ["target/gpu-check.tar.xz", "target/wheels"],
#        command "bash tools/device_session.sh", timeout_s 590
# Back:  $OUT/results.json -> benches/results.json; $OUT/BENCHMARKS_gpu.md -> BENCHMARKS.md;
#        $OUT/tests.txt (test log), $OUT/bench.tar.gz (everything else).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/session}
mkdir -p "$OUT"
B=target/gpu-check
# The binaries travel packed (tools/prepare_gpu_check.sh).
[ -d target/gpu-check ] || tar -xJf target/gpu-check.tar.xz -C target
t0=$(date +%s)
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    cat "$B/COMMIT"
    echo "== real-GPU tests"
    timeout "${TESTS_BUDGET_S:-100}" "$B/tests/gpu_cuda" --test-threads 1 2>&1 | tail -40
    echo "gpu_cuda rc ${PIPESTATUS[0]}"
    timeout 40 "$B/tests/diffstyle" cuda --test-threads 1 2>&1 | tail -20
    echo "lib cuda_* rc ${PIPESTATUS[0]}"
    echo "== kernel micro-benchmarks"
    timeout 40 "$B/diffstyle" --device cuda kernels --out "$OUT/kernels.json"
} >"$OUT/tests.txt" 2>&1
tail -12 "$OUT/tests.txt"
left=$((570 - ($(date +%s) - t0)))
echo "== $left s left for the benchmark"
OUT="$OUT" OURS_BUDGET_S=$((left * 9 / 20)) TORCH_BUDGET_S=$((left / 2)) bash tools/bench_gpu.sh
