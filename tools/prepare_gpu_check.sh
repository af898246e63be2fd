#!/usr/bin/env bash
# Builds, here (cargo is not on the GPU machine), what tools/gpu_check.sh runs there:
# the release binary and the test binaries, stripped, under target/gpu-check/. Carry
# that folder to the device machine (device tool: carry ["target/gpu-check"]), and
# target/wheels (the Python packages the baselines need there; tools/fetch_wheels.sh)
# for tools/bench_gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_nvcc.sh
cargo build --release
out=target/gpu-check
rm -rf "$out" && mkdir -p "$out/tests"
cp target/release/diffstyle "$out/diffstyle"
# Test executables (the lib's unit tests run the kernels on the real GPU too when asked).
cargo test --release --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"]:
        name = m["target"]["name"]
        if name in ("gpu_cuda", "diffstyle", "gpu_emu"):
            shutil.copy(m["executable"], "target/gpu-check/tests/" + name)
'
strip "$out/diffstyle" "$out"/tests/*
# The device copy of the tree has no .git: record what was built.
git rev-parse HEAD >"$out/COMMIT"
git diff --quiet HEAD || echo "(with uncommitted changes)" >>"$out/COMMIT"
bash tools/fetch_wheels.sh
du -sh "$out"
