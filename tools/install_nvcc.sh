#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler toolchain from the Python package index into
# .toolchain/cuda (nvcc is then .toolchain/cuda/nvidia/cu13/bin/nvcc). nvvm is pinned
# too: a newer one emits PTX that the 13.0 ptxas and the 580 driver reject.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.toolchain/cuda
if [ -x "$dest/nvidia/cu13/bin/nvcc" ]; then
  echo "nvcc already installed: $dest/nvidia/cu13/bin/nvcc"
  exit 0
fi
python3 -m pip install --quiet --target "$dest" \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-cccl==13.0.85 nvidia-nvvm==13.0.88
echo "nvcc installed: $dest/nvidia/cu13/bin/nvcc"
