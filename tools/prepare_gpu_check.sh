#!/usr/bin/env bash
# Builds, here (cargo is not on the GPU machine), what tools/device_session.sh and
# tools/gpu_check.sh run there:
# the release binary and the real-GPU test binaries, stripped, under target/gpu-check/,
# and the same packed as target/gpu-check.tar.xz: what travels to a device call is
# limited to 64 MiB with the tracked files (~30 MB), so carry the archive (the device
# scripts unpack it) and target/wheels (the Python packages the baselines need there;
# tools/fetch_wheels.sh):  carry ["target/gpu-check.tar.xz", "target/wheels"].
# The kernels are compiled for the lent GPU only (an H200: DS_CUDA_ARCHS=sm_90a, read
# by build.rs), which keeps the binaries small; set DS_CUDA_ARCHS to build for another.
# (A later plain `cargo build --release` reruns build.rs for the default list.)
set -euo pipefail
cd "$(dirname "$0")/.."
export DS_CUDA_ARCHS=${DS_CUDA_ARCHS:-sm_90a}
bash tools/install_nvcc.sh
# The fatbin this build embeds: build.rs's OUT_DIR, as cargo reports it.
out_dir=$(cargo build --release --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and "#diffstyle@" in m["package_id"]:
        print(m["out_dir"])
' | tail -1)
fatbin="$out_dir/kernels.fatbin"
# An empty fatbin means a binary without kernels: useless on the GPU.
if [ -z "$out_dir" ] || [ ! -s "$fatbin" ]; then
  echo "prepare_gpu_check: '$fatbin' is missing or empty: the release build has no GPU kernels (nvcc not found?)" >&2
  exit 1
fi
echo "kernels for $DS_CUDA_ARCHS: $fatbin ($(stat -c %s "$fatbin") bytes)"
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
