#!/usr/bin/env bash
# Runs on a lent GPU machine, from the repository root, with target/gpu-check/ carried
# (made by tools/prepare_gpu_check.sh): the real-GPU tests, then the authors' in-domain
# defaults and the fast preset end to end on a DDPM-256-shaped model (113 M random
# weights), in f32 and bf16, with timings, and the fast preset on the ADM-256 shapes
# (adm-afhq-256, adm-imagenet-256-uncond). Writes its log and images under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
B=target/gpu-check
# The binaries travel packed (tools/prepare_gpu_check.sh).
[ -d target/gpu-check ] || tar -xJf target/gpu-check.tar.xz -C target
log() { echo "== $*" | tee -a "$OUT/log.txt"; }
run() { log "$*"; "$@" 2>&1 | tee -a "$OUT/log.txt"; }
run nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
run date -u
run cat "$B/COMMIT"
run "$B/tests/gpu_cuda" --test-threads 1 --nocapture
run "$B/tests/diffstyle" cuda --test-threads 1 --nocapture
run "$B/diffstyle" random-model --arch ddpm-256 --out /tmp/ddpm256.safetensors
run "$B/diffstyle" --device cuda info --model /tmp/ddpm256.safetensors --arch ddpm-256
for p in f32 bf16; do
  run /usr/bin/time -v "$B/diffstyle" --device cuda --precision $p --verbose --quiet transfer \
    --model /tmp/ddpm256.safetensors --arch ddpm-256 --content examples/content.png --style examples/style.png \
    --out "$OUT/ddpm256_fast_$p.png" --preset fast
  run "$B/diffstyle" --device cuda --precision $p --verbose --quiet transfer \
    --model /tmp/ddpm256.safetensors --arch ddpm-256 --content examples/content.png --style examples/style.png \
    --out "$OUT/ddpm256_indomain_$p.png"
done
# The ADM family (ILVR / P2 and ImageNet shapes, random weights): fast preset, f32 and bf16.
for a in adm-afhq-256 adm-imagenet-256-uncond; do
  run "$B/diffstyle" random-model --arch $a --out /tmp/$a.safetensors
  run "$B/diffstyle" --device cuda info --model /tmp/$a.safetensors --arch $a
  for p in f32 bf16; do
    run /usr/bin/time -v "$B/diffstyle" --device cuda --precision $p --verbose --quiet transfer \
      --model /tmp/$a.safetensors --arch $a --content examples/content.png --style examples/style.png \
      --out "$OUT/${a}_fast_$p.png" --preset fast
  done
done
