#!/usr/bin/env bash
# The Python wheels tools/bench_torch_gpu.py needs on the GPU machine, which has PyTorch,
# huggingface_hub, safetensors, numpy, pillow, regex, requests and filelock but not
# diffusers, and no network.
#
#   tools/fetch_wheels.sh              # here (network): pip download into target/wheels/
#   tools/fetch_wheels.sh --install    # there (no network): install them from target/wheels/
#   tools/fetch_wheels.sh --check      # either: does `from diffusers import UNet2DModel` work?
#
# What is downloaded: diffusers==0.42.1 only (--no-deps). Its other runtime requirements
# (filelock, huggingface-hub, numpy, Pillow, regex, requests, safetensors) are in the
# device image; `importlib_metadata` is imported by diffusers only on Python < 3.8 (it uses
# the standard library's importlib.metadata otherwise), so the device's Python 3.12 does
# not need it. EXTRA_WHEELS="pkg==ver ..." downloads more pure-Python wheels if a check on
# the device names a missing module.
#
# --install: `pip install --no-index --no-deps target/wheels/*.whl`; if pip refuses (no
# pip, read-only site-packages, ...) the wheels are unzipped into target/wheels/site/,
# which tools/bench_torch_gpu.py puts on sys.path by itself when diffusers is not
# importable (for other scripts: export PYTHONPATH=$PWD/target/wheels/site).
# Carry target/wheels to the device machine (run's `carry`), then run --install there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${WHEELS_DIR:-$ROOT/target/wheels}"
PY="${PYTHON:-python3}"
PKGS=("diffusers==0.42.1")
# shellcheck disable=SC2206
[ -n "${EXTRA_WHEELS:-}" ] && PKGS+=(${EXTRA_WHEELS})

check() {
    PYTHONPATH="$WHEELS/site${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'EOF'
import diffusers
from diffusers import UNet2DModel  # noqa: F401  (the import bench_torch_gpu.py needs)
print(f"diffusers {diffusers.__version__} importable from {diffusers.__file__}")
EOF
}

case "${1:-}" in
"")
    mkdir -p "$WHEELS"
    "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" "${PKGS[@]}"
    ls -l "$WHEELS"/*.whl
    ;;
--install)
    shopt -s nullglob
    whl=("$WHEELS"/*.whl)
    if [ ${#whl[@]} -eq 0 ]; then
        echo "no wheels in $WHEELS: run tools/fetch_wheels.sh where there is network, then carry target/wheels" >&2
        exit 1
    fi
    if "$PY" -m pip install --no-index --no-deps "${whl[@]}"; then
        echo "installed: ${whl[*]##*/}"
    else
        echo "pip install refused; unzipping into $WHEELS/site (PYTHONPATH=$WHEELS/site)" >&2
        rm -rf "$WHEELS/site"
        mkdir -p "$WHEELS/site"
        for w in "${whl[@]}"; do
            "$PY" -m zipfile -e "$w" "$WHEELS/site"
        done
    fi
    check
    ;;
--check)
    check
    ;;
*)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
