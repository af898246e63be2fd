#!/usr/bin/env bash
# CPU U-Net forward: diffstyle (cargo bench --bench forward) against PyTorch
# (tools/bench_torch_cpu.py), batch 1, f32, on the tiny fixture model and on
# google/ddpm-celebahq-256's architecture with random weights (created once under
# $DIFFSTYLE_BENCH_DIR, default /tmp/diffstyle-bench). Prints a markdown table.
#
# Usage: tools/bench_cpu.sh [MODEL ...]        (MODEL: tiny, ddpm256; default both)
# Env:   DIFFSTYLE_BENCH_DIR, DIFFSTYLE_BENCH_MIN_SECS (3), DIFFSTYLE_BENCH_PROFILE=1
# Needs: cargo; python3 with torch, diffusers, safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."

export DIFFSTYLE_BENCH_DIR="${DIFFSTYLE_BENCH_DIR:-/tmp/diffstyle-bench}"
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(tiny ddpm256)
csv=$(IFS=,; echo "${models[*]}")

tmp=$(mktemp -d)
sampler=
trap '[ -z "$sampler" ] || kill "$sampler" 2>/dev/null; rm -rf "$tmp"' EXIT

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# The 1-minute load average every 5 s while a phase runs (its own threads count too).
sample_load() { while :; do cut -d' ' -f1 /proc/loadavg >>"$1"; sleep 5; done; }
start_sampler() { sample_load "$tmp/load_$1.txt" & sampler=$!; }
stop_sampler() { kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true; sampler=; }

if [[ " ${models[*]} " == *" ddpm256 "* ]]; then
    python3 tools/bench_torch_cpu.py --create-only --dir "$DIFFSTYLE_BENCH_DIR"
fi

echo "== building the bench" >&2
cargo bench -q --bench forward --no-run >&2

echo "== diffstyle (load average before: $(loadavg))" >&2
l0=$(loadavg)
start_sampler ours
cargo bench -q --bench forward -- "${models[@]}" | tee "$tmp/ours.txt" >&2
stop_sampler
l1=$(loadavg)
echo "== pytorch (load average before: $l1)" >&2
start_sampler torch
python3 tools/bench_torch_cpu.py --dir "$DIFFSTYLE_BENCH_DIR" --models "$csv" \
    --min-seconds "${DIFFSTYLE_BENCH_MIN_SECS:-3}" | tee "$tmp/torch.txt" >&2
stop_sampler
l2=$(loadavg)

python3 - "$tmp/ours.txt" "$tmp/torch.txt" "$l0" "$l1" "$l2" "$tmp/load_ours.txt" "$tmp/load_torch.txt" <<'EOF'
import json, os, sys

def rows(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            out[r["model"]] = r
    return out

ours, torch = rows(sys.argv[1]), rows(sys.argv[2])
print()
print("| model | ours ms | torch ms | ours / torch | ours GFLOP/s | torch GFLOP/s | runs (ours, torch) |")
print("|---|---:|---:|---:|---:|---:|---|")
for name, o in ours.items():
    t = torch.get(name)
    if t is None:
        continue
    tg = o["gflop"] / (t["torch_ms_median"] / 1e3)
    print(
        f"| {name} | {o['ours_ms_median']:.2f} | {t['torch_ms_median']:.2f} | "
        f"{o['ours_ms_median'] / t['torch_ms_median']:.2f}x | {o['gflops']:.1f} | {tg:.1f} | "
        f"{o['runs']}, {t['runs']} |"
    )
any_row = next(iter(torch.values()), None)
print()
print(
    f"threads: ours {next(iter(ours.values()), {}).get('threads', '?')}, torch "
    f"{any_row['threads'] if any_row else '?'} (torch {any_row['torch_version'] if any_row else '?'}, "
    f"OMP_WAIT_POLICY {any_row.get('omp_wait_policy', '?') if any_row else '?'}); "
    "GFLOP/s both from diffstyle's FLOP count (Graph::flops, multiply-add = 2)"
)
print(f"load average (1/5/15 min): before ours {sys.argv[3]}; before torch {sys.argv[4]}; after {sys.argv[5]}")

def span(path):
    v = [float(x) for x in open(path).read().split()] if os.path.exists(path) else []
    return f"{min(v):.2f}..{max(v):.2f} (mean {sum(v) / len(v):.2f}, {len(v)} samples)" if v else "n/a"

print(f"1-min load during the runs (5 s samples): ours {span(sys.argv[6])}; torch {span(sys.argv[7])}")
EOF
