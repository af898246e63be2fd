#!/usr/bin/env bash
# Writes what the emulated kernels give for a fixed set of transfers (DDPM and ADM
# fixtures; f32, bf16 and f16 weights; mask and calibration) into OUTDIR, as PNGs and
# --dump-tensor safetensors, so that two builds of the emulator can be compared bit for
# bit after a change to it (kernels/emu/, kernels/mma.cuh):
#
#   git stash; cargo build --release; bash tools/emu_outputs.sh target/release/diffstyle /tmp/before
#   git stash pop; cargo build --release; bash tools/emu_outputs.sh target/release/diffstyle /tmp/after
#   diff -r /tmp/before /tmp/after && echo identical
#
# About 40 s on 2 cores. Not run by CI.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 DIFFSTYLE_BINARY OUTDIR" >&2; exit 2; }
bin=$1
out=$2
cd "$(dirname "$0")/.."
mkdir -p "$out"
m=tests/fixtures/method
a=tests/fixtures/method_adm
for p in f32 bf16 f16; do
    "$bin" -q --device emu --precision "$p" transfer --model "$m/model" \
        --content "$m/mask/content.png" --style "$m/mask/style.png" --mask "$m/mask/mask.png" \
        --inv-steps 6 --gen-steps 12 --replace-steps 6 --t-boost 600 --omega 0.2 \
        --out "$out/ddpm_$p.png" --dump-tensor "$out/ddpm_$p.safetensors"
    "$bin" -q --device emu --precision "$p" transfer --model "$a/model/model.safetensors" \
        --config "$a/model/model.json" --content "$a/adm_mask_omega/content.png" \
        --style "$a/adm_mask_omega/style.png" --inv-steps 4 --gen-steps 6 --omega 0.3 \
        --out "$out/adm_$p.png" --dump-tensor "$out/adm_$p.safetensors"
done
echo "wrote $(ls "$out" | wc -l) files to $out"
