#!/usr/bin/env bash
# Builds, here (cargo is not on the GPU machine), what tools/gpu_check.sh runs there:
# the release binary and the real-GPU test binaries, stripped, under target/gpu-check/,
# and the same packed as target/gpu-check.tar.xz: what travels to a device call is
# limited to 64 MiB with the tracked files (~30 MB), so carry the archive (the device
# scripts unpack it) and target/wheels (the Python packages the baselines need there;
# tools/fetch_wheels.sh):  carry ["target/gpu-check.tar.xz", "target/wheels"].
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
        if name in ("gpu_cuda", "diffstyle"):
            shutil.copy(m["executable"], "target/gpu-check/tests/" + name)
'
strip "$out/diffstyle" "$out"/tests/*
# The device copy of the tree has no .git: record what was built.
git rev-parse HEAD >"$out/COMMIT"
git diff --quiet HEAD || echo "(with uncommitted changes)" >>"$out/COMMIT"
bash tools/fetch_wheels.sh
tar -cJf target/gpu-check.tar.xz -C target gpu-check
du -sh "$out" target/gpu-check.tar.xz target/wheels
