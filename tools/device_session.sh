#!/usr/bin/env bash
# Everything a lent GPU is for, in ONE device call of well under 10 minutes, key facts
# first, so that a call cut short still brings back what it learned:
#   1. nvidia-smi; `diffstyle --device cuda info --arch ddpm-256` (the module loads);
#   2. every real-GPU test in its own process (`--exact`, names from `--list`): the lib's
#      cuda_* unit tests, then tests/gpu_cuda, its ddpm256_forward_vs_cpu (the DDPM-256
#      forward against the CPU) last;
#   3. batch-1 forward timings: ours bf16 / f16 / f32 (`diffstyle bench`), then PyTorch
#      eager f32 and f16 (tools/bench_torch_gpu.py, batch 1);
#   4. a fast-preset pair, ours (bf16) and PyTorch (eager f16);
#   5. only with time left: throughput (ours, PyTorch), torch.compile batch 1, the
#      in-domain pair, the kernel micro-benchmarks, compute-sanitizer memcheck and
#      racecheck on small shapes (when the tool is on the machine), then the report
#      (tools/bench_report.py: results.json and a BENCHMARKS.md section).
# One overall deadline: each step runs under `timeout` with what is left of it (and its
# own cap); a step that no longer fits is recorded as skipped. After EVERY step
# $OUT/summary.json is rewritten (per step: status, rc, seconds, key figures, the tail
# of its output) and the archive of everything else is refreshed. A real-GPU test that
# finds no usable GPU passes with "skipped: no usable GPU": counts.tests_without_gpu says
# how many did (0 on a working GPU).
#
# Here:  tools/prepare_gpu_check.sh   (binaries for sm_90a only, wheels)
# There: device run, carry ["target/gpu-check.tar.xz", "target/wheels"],
#        command "bash tools/device_session.sh", timeout_s 600 (the script stops
#        itself at DEADLINE_S)
# Back (at most 8 files; 5 today): $OUT/summary.json (read it first), $OUT/session.log
#        (all output, unbuffered), $OUT/session.tar.gz (every step's log, ours/,
#        torch*.json, images, kernels.json), and when the report ran $OUT/results.json
#        -> benches/results.json, $OUT/BENCHMARKS_gpu.md -> BENCHMARKS.md.
#
# --dry-run: the same script, here, end to end, on the host emulator (--device emu)
# with the tiny fixture model (tests/fixtures/method/model), tiny timing options and
# 2-step `transfer` runs in place of the timed pairs,
# using target/debug binaries (DRY_PROFILE=release: target/release; the test
# executables are located with `cargo test --no-run`, which builds nothing after a
# `cargo test`); the PyTorch steps are recorded as skipped. It proves the plumbing (step
# order, deadlines, summary JSON, file count) and exits non-zero when it is broken.
# CI runs it (.ci/run).
#
# Env: OUT (default /tmp/session), DEADLINE_S (overall, default 540), TEST_CAP_S (per
# test process, default 90), RESERVE_S (kept for the final packing, default 8),
# KEEP_WORK=1 (keep the work folder), DRY_PROFILE (debug|release, --dry-run only),
# DRY_SLOW_S (--dry-run only: a `sleep` step after info, to test the deadline).
# Exit status: 0 when every step that ran succeeded (skipped steps do not count),
# 1 when a step failed or timed out, 2 on a usage or plumbing error.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

DRY=0
for a in "$@"; do
    case $a in
        --dry-run) DRY=1 ;;
        -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "device_session.sh: unknown argument '$a' (--dry-run, --help)" >&2; exit 2 ;;
    esac
done

OUT=${OUT:-/tmp/session}
DEADLINE_S=${DEADLINE_S:-540}
TEST_CAP_S=${TEST_CAP_S:-90}
RESERVE_S=${RESERVE_S:-8}
T0=$(date +%s)
END=$((T0 + DEADLINE_S))
mkdir -p "$OUT" || { echo "device_session.sh: cannot create OUT=$OUT" >&2; exit 2; }
W=$(mktemp -d /tmp/ds_session.XXXXXX) || exit 2
mkdir -p "$W/logs"
LOG="$OUT/session.log"
SUMMARY="$OUT/summary.json"
ARCHIVE="$OUT/session.tar.gz"
# What this script leaves in $OUT (nothing stale from an earlier run in the same OUT).
rm -f "$SUMMARY" "$ARCHIVE" "$OUT/results.json" "$OUT/BENCHMARKS_gpu.md"
: >"$LOG"
# Line-buffered output of every step (Rust flushes lines itself; python3 gets -u).
STDBUF=()
command -v stdbuf >/dev/null && STDBUF=(stdbuf -oL -eL)

say() { echo "== $(date -u +%T) +$(($(date +%s) - T0))s $*" | tee -a "$LOG"; }
left() { echo $((END - $(date +%s) - RESERVE_S)); }

# JSON string from arbitrary text (printable ASCII kept, newlines and tabs escaped).
json_str() {
    printf '"'
    printf '%s' "$1" | LC_ALL=C tr -cd '\11\12\40-\176' |
        sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' |
        awk 'BEGIN { ORS = "" } NR > 1 { print "\\n" } { print }'
    printf '"'
}

STEPS=()   # one JSON object per step, in order
N_OK=0 N_FAILED=0 N_TIMEOUT=0 N_SKIPPED=0 N_NO_GPU=0
STATE=running   # then done, "out of time" (a step was skipped for lack of time) or killed
CUT=0
GPU_LINE=""
if [ "$DRY" = 1 ]; then MODE=dry-run; else MODE=gpu; fi

write_summary() {
    local tmp="$SUMMARY.tmp" i sep=""
    {
        printf '{\n  "script": "tools/device_session.sh",\n  "mode": "%s",\n  "state": "%s",\n' "$MODE" "$STATE"
        printf '  "commit": %s,\n' "$(json_str "${COMMIT:-unknown}")"
        printf '  "binaries": %s,\n' "$(json_str "${BIN_DESC:-}")"
        printf '  "gpu": %s,\n' "$(json_str "$GPU_LINE")"
        printf '  "started_utc": "%s",\n  "deadline_s": %d,\n  "elapsed_s": %d,\n' \
            "$(date -u -d "@$T0" +%FT%TZ 2>/dev/null || echo "$T0")" "$DEADLINE_S" $(($(date +%s) - T0))
        printf '  "counts": {"ok": %d, "failed": %d, "timeout": %d, "skipped": %d, "tests_without_gpu": %d},\n' \
            "$N_OK" "$N_FAILED" "$N_TIMEOUT" "$N_SKIPPED" "$N_NO_GPU"
        printf '  "steps": ['
        for i in "${STEPS[@]}"; do printf '%s\n    %s' "$sep" "$i"; sep=","; done
        printf '\n  ]\n}\n'
    } >"$tmp" && mv -f "$tmp" "$SUMMARY"
}

# Packs the work folder (step logs and outputs) into the one archive, atomically.
pack() {
    tar -czf "$ARCHIVE.tmp" -C "$W" . 2>/dev/null && mv -f "$ARCHIVE.tmp" "$ARCHIVE"
}

record() { # name status rc seconds timeout_s key tail
    STEPS+=("{\"name\": $(json_str "$1"), \"status\": \"$2\", \"rc\": $3, \"seconds\": $4, \"timeout_s\": $5, \"key\": $(json_str "$6"), \"tail\": $(json_str "$7")}")
    case $2 in ok) N_OK=$((N_OK + 1)) ;; failed) N_FAILED=$((N_FAILED + 1)) ;; timeout) N_TIMEOUT=$((N_TIMEOUT + 1)) ;; *) N_SKIPPED=$((N_SKIPPED + 1)) ;; esac
    write_summary
    pack
}

skip() { # name why
    say "skip $1: $2"
    record "$1" skipped null 0 null "$2" ""
}

# step NAME CAP_S MIN_S KEY_RE -- CMD...: runs CMD under `timeout min(CAP_S, time left)`
# unless less than MIN_S is left; its output goes to the console, session.log and
# logs/NAME.log; KEY_RE picks the key lines of that output for the summary.
step() {
    local name=$1 cap=$2 min=$3 key_re=$4
    shift 5
    local l t s rc status f="$W/logs/${name//[^A-Za-z0-9_.-]/_}.log"
    l=$(left)
    if [ "$l" -lt "$min" ]; then CUT=1; skip "$name" "out of time: ${l}s left, needs ${min}s"; return 0; fi
    t=$((cap < l ? cap : l))
    say "$name (timeout ${t}s): $*"
    s=$(date +%s)
    timeout -k 5 "$t" "${STDBUF[@]}" "$@" </dev/null 2>&1 | tee -a "$f" "$LOG"
    rc=${PIPESTATUS[0]}
    s=$(($(date +%s) - s))
    if [ "$rc" = 0 ]; then status=ok; elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout; else status=failed; fi
    say "$name: $status (rc $rc, ${s}s)"
    local key tail
    key=$(grep -E -- "$key_re" "$f" 2>/dev/null | head -12 | cut -c1-200)
    tail=$(tail -n 6 "$f" 2>/dev/null | cut -c1-200)
    [ "$status" = ok ] || tail -n 15 "$f" | sed 's/^/   | /'
    # A real-GPU test passes when it finds no usable GPU: count those apart.
    grep -q 'skipped: no usable GPU' "$f" 2>/dev/null && N_NO_GPU=$((N_NO_GPU + 1))
    record "$name" "$status" "$rc" "$s" "$t" "$key" "$tail"
    return 0
}

finish() {
    [ "$STATE" = running ] && STATE=done
    write_summary
    pack
    [ "${KEEP_WORK:-0}" = 1 ] && say "work folder kept: $W" || rm -rf "$W"
    local n
    n=$(find "$OUT" -mindepth 1 -maxdepth 1 | wc -l)
    say "done: ${N_OK} ok, ${N_FAILED} failed, ${N_TIMEOUT} timed out, ${N_SKIPPED} skipped; $n files in $OUT"
    [ "$n" -le 8 ] || say "WARNING: more than 8 files in $OUT"
    sed -n '1,/"steps"/p' "$SUMMARY" | head -12
    if [ $((N_FAILED + N_TIMEOUT)) -gt 0 ]; then exit 1; fi
    exit 0
}
# A TERM from outside (the device call's own limit) still leaves a valid summary.
trap 'STATE="killed"; write_summary; exit 1' TERM INT

# ---- binaries -------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    PROFILE=${DRY_PROFILE:-debug}
    case $PROFILE in debug) CARGO_PROFILE=() ;; release) CARGO_PROFILE=(--release) ;; *) echo "DRY_PROFILE must be debug or release" >&2; exit 2 ;; esac
    B="$W/bin"
    mkdir -p "$B/tests"
    ln -s "$ROOT/target/$PROFILE/diffstyle" "$B/diffstyle"
    # The test executables this tree's `cargo test` built (the same selection as
    # tools/prepare_gpu_check.sh makes for the GPU).
    cargo test "${CARGO_PROFILE[@]}" --no-run --message-format=json 2>"$W/logs/cargo_no_run.log" |
        python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"]:
        if m["target"]["name"] in ("gpu_cuda", "diffstyle"):
            os.symlink(m["executable"], os.path.join(sys.argv[1], m["target"]["name"]))
' "$B/tests"
    for f in "$B/diffstyle" "$B/tests/gpu_cuda" "$B/tests/diffstyle"; do
        [ -x "$f" ] || { echo "device_session.sh --dry-run: $f missing (run cargo build / cargo test first; see $W/logs/cargo_no_run.log)" >&2; exit 2; }
    done
    COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    BIN_DESC="target/$PROFILE (dry run)"
    DEV=emu
    MODEL=tests/fixtures/method/model
    MODEL_ARGS=(--model "$MODEL")
    INFO_ARGS=(--model "$MODEL")
    # Tiny timings: one run each, no warm-up.
    TIMING=(--min-runs 1 --min-secs 0 --warmup 0)
    THROUGHPUT=2
else
    B=target/gpu-check
    # The binaries travel packed (tools/prepare_gpu_check.sh).
    if [ ! -d "$B" ]; then
        tar -xJf target/gpu-check.tar.xz -C target || { echo "device_session.sh: no target/gpu-check(.tar.xz): run tools/prepare_gpu_check.sh and carry it" >&2; exit 2; }
    fi
    COMMIT=$(tr '\n' ' ' <"$B/COMMIT" 2>/dev/null | sed 's/ *$//')
    BIN_DESC="target/gpu-check"
    DEV=cuda
    MODEL=/tmp/ddpm256.safetensors
    MODEL_ARGS=(--model "$MODEL" --arch ddpm-256)
    INFO_ARGS=(--arch ddpm-256)
    TIMING=(--min-runs 10 --min-secs 0.5 --warmup 3)
    THROUGHPUT=8
fi
D="$B/diffstyle"
T="$B/tests"
IMAGES=(--content examples/content.png --style examples/style.png)
if [ "$DRY" = 1 ]; then
    # On the emulator a whole pair takes minutes even on the tiny model: `transfer` with
    # 2-4 steps stands in for the timed pairs (same binary, same steps, same plumbing).
    TINY=(--inv-steps 2 --gen-steps 2 --replace-steps 1)
    PAIR_FAST=("$D" --device emu --quiet transfer "${MODEL_ARGS[@]}" "${IMAGES[@]}" --preset fast "${TINY[@]}"
        --out "$W/pair_fast.png")
    THROUGHPUT_RUN=("$D" --device emu --quiet transfer "${MODEL_ARGS[@]}" --content examples/content.png
        examples/style.png --style examples/style.png --batch 2 --preset fast "${TINY[@]}" --out "$W/throughput")
    PAIR_IN_DOMAIN=("$D" --device emu --quiet transfer "${MODEL_ARGS[@]}" "${IMAGES[@]}" --preset in-domain
        "${TINY[@]}" --out "$W/pair_in_domain.png")
else
    PAIR_FAST=("$D" --device cuda --quiet bench "${MODEL_ARGS[@]}" --out-dir "$W/ours_fast" --batches 1
        --pairs fast --precisions bf16 --pair-precisions bf16 "${TIMING[@]}" "${IMAGES[@]}")
    THROUGHPUT_RUN=("$D" --device cuda --quiet bench "${MODEL_ARGS[@]}" --out-dir "$W/ours_throughput"
        --batches 1 --no-pairs --throughput "$THROUGHPUT" --precisions bf16 --pair-precisions bf16
        "${TIMING[@]}" "${IMAGES[@]}")
    PAIR_IN_DOMAIN=("$D" --device cuda --quiet bench "${MODEL_ARGS[@]}" --out-dir "$W/ours_in_domain"
        --batches 1 --pairs in-domain --precisions bf16 --pair-precisions bf16 "${TIMING[@]}" "${IMAGES[@]}")
fi
say "device_session.sh $MODE: commit $COMMIT, binaries $BIN_DESC, deadline ${DEADLINE_S}s, OUT=$OUT, work $W"
write_summary

# ---- 1. the machine, and the module loads ---------------------------------------------
if [ "$DRY" = 1 ]; then
    skip nvidia-smi "dry run: no GPU"
else
    step nvidia-smi 20 5 '.' -- nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
    GPU_LINE=$(sed -n 2p "$W/logs/nvidia-smi.log" 2>/dev/null)
    write_summary
fi
step info 60 10 '^device memory|^parameters|[Ee]rror|no kernels|not ' -- "$D" --device "$DEV" info "${INFO_ARGS[@]}"
# Dry run only: a step that outlasts a tiny DEADLINE_S (tools/check_device_session.sh).
if [ "$DRY" = 1 ] && [ -n "${DRY_SLOW_S:-}" ]; then
    step dry:slow "$DRY_SLOW_S" 1 'x^' -- sleep "$DRY_SLOW_S"
fi

# ---- 2. real-GPU tests, one process each ----------------------------------------------
TEST_KEY='test result|skipped|panicked|FAILED|rel_l2|error'
LIB_TESTS=$("$T/diffstyle" --list cuda_ 2>/dev/null | sed -n 's/: test$//p')
[ -n "$LIB_TESTS" ] || { say "no cuda_ tests listed by $T/diffstyle --list cuda_"; record "list lib cuda_" failed 1 0 null "" ""; }
for name in $LIB_TESTS; do
    step "lib:$name" "$TEST_CAP_S" 5 "$TEST_KEY" -- "$T/diffstyle" --exact "$name" --test-threads 1 --nocapture
done
GPU_TESTS=$("$T/gpu_cuda" --list 2>/dev/null | sed -n 's/: test$//p')
[ -n "$GPU_TESTS" ] || { say "no tests listed by $T/gpu_cuda --list"; record "list gpu_cuda" failed 1 0 null "" ""; }
for name in $(echo "$GPU_TESTS" | grep -v '^ddpm256_forward_vs_cpu$'); do
    step "gpu_cuda:$name" "$TEST_CAP_S" 5 "$TEST_KEY" -- "$T/gpu_cuda" --exact "$name" --test-threads 1 --nocapture
done
# ---- 3. the DDPM-256 forward against the CPU --------------------------------------------
if echo "$GPU_TESTS" | grep -qx ddpm256_forward_vs_cpu; then
    step gpu_cuda:ddpm256_forward_vs_cpu 150 10 "$TEST_KEY" -- "$T/gpu_cuda" --exact ddpm256_forward_vs_cpu --test-threads 1 --nocapture
else
    record gpu_cuda:ddpm256_forward_vs_cpu failed 1 0 null "not listed by gpu_cuda --list" ""
fi

# ---- 4. batch-1 forwards: ours, then PyTorch eager --------------------------------------
BENCH_KEY='^(f32|f16|bf16) |^device:|[Ee]rror'
TORCH_KEY='forward .* ms|pair .*: .* s|throughput .*pairs/s|failed|[Ee]rror|skipped'
if [ "$DRY" != 1 ]; then
    step random-model 60 10 'wrote|[Ee]rror' -- "$D" random-model --arch ddpm-256 --out "$MODEL"
fi
step ours:forward-b1 120 20 "$BENCH_KEY" -- "$D" --device "$DEV" --quiet bench "${MODEL_ARGS[@]}" \
    --out-dir "$W/ours" --batches 1 --no-pairs --precisions bf16,f16,f32 "${TIMING[@]}" "${IMAGES[@]}"

TORCH=(python3 -u tools/bench_torch_gpu.py "${MODEL_ARGS[@]}" --min-runs 10 --min-secs 0.5 --no-ceilings)
torch_step() { # name cap min args...
    local name=$1 cap=$2 min=$3
    shift 3
    if [ "$DRY" = 1 ]; then skip "$name" "dry run: no PyTorch GPU"; return; fi
    if [ "$TORCH_READY" != 1 ]; then skip "$name" "PyTorch unavailable (see step torch:wheels)"; return; fi
    step "$name" "$cap" "$min" "$TORCH_KEY" -- "${TORCH[@]}" "$@"
}
TORCH_READY=0
if [ "$DRY" = 1 ]; then
    skip torch:wheels "dry run: no PyTorch GPU"
else
    step torch:wheels 90 20 'nstall|[Ee]rror' -- bash tools/fetch_wheels.sh --install
    timeout 90 python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null && TORCH_READY=1
fi
torch_step torch:eager-b1 150 30 --impls eager_f32,eager_f16 --batches 1 --pairs none --throughput none \
    --ours "$W/ours" --out "$W/torch_forward.json"

# ---- 5. a fast-preset pair --------------------------------------------------------------
step ours:pair-fast 120 30 "$BENCH_KEY" -- "${PAIR_FAST[@]}"
torch_step torch:pair-fast 120 40 --impls eager_f16 --batches 1 --pairs fast --throughput none \
    --ours "$W/ours_fast" --out "$W/torch_fast.json" --save-images "$W/torch_images"

# ---- 6. only with time left -------------------------------------------------------------
step ours:throughput 90 40 "$BENCH_KEY" -- "${THROUGHPUT_RUN[@]}"
torch_step torch:throughput 90 40 --impls eager_f16 --batches 1 --pairs none --throughput "$THROUGHPUT" \
    --ours "$W/ours_throughput" --out "$W/torch_throughput.json"
torch_step torch:compile-b1 200 90 --impls compile_f16 --batches 1 --compile-batches 1 --pairs none \
    --throughput none --ours "$W/ours" --out "$W/torch_compile.json"
step ours:pair-in-domain 150 60 "$BENCH_KEY" -- "${PAIR_IN_DOMAIN[@]}"
torch_step torch:pair-in-domain 150 60 --impls eager_f16 --batches 1 --pairs in-domain --throughput none \
    --ours "$W/ours_in_domain" --out "$W/torch_in_domain.json"
step kernels 90 30 'TFLOP|GB/s|[Ee]rror' -- "$D" --device "$DEV" kernels --precisions bf16 --out "$W/kernels.json"
if [ "$DRY" = 1 ]; then
    skip sanitizer "dry run: no GPU"
elif ! SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1) ||
    [ -z "$SAN" ]; then
    skip sanitizer "compute-sanitizer is not on this machine"
else
    for tool in memcheck racecheck; do
        step "sanitizer:$tool" 120 40 'ERROR SUMMARY|[Ee]rror|hazard' -- "$SAN" --tool "$tool" \
            --error-exitcode 3 "$D" --device cuda kernels --small --precisions bf16
    done
fi
# The table: ours (forwards) with the eager baselines.
if [ "$DRY" != 1 ] && [ -f "$W/ours/ours.json" ] && [ -f "$W/torch_forward.json" ]; then
    step report 30 5 'wrote|[Ee]rror|Traceback' -- python3 tools/bench_report.py "$W/ours" "$W/torch_forward.json" \
        --commit "$COMMIT" --date "$(date -u +%F)" --command "tools/device_session.sh" \
        --results "$OUT/results.json" --markdown "$OUT/BENCHMARKS_gpu.md"
else
    skip report "needs ours/ours.json and torch_forward.json"
fi
[ "$CUT" = 1 ] && STATE="out of time"
finish
