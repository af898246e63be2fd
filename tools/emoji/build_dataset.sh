#!/usr/bin/env bash
# Builds the emoji style dataset into target/emoji/ (see build_dataset.py for the steps)
# and writes DATA_LICENSES at the repo root. Needs npm (node >= 18) and Python 3.11 with
# numpy, pillow and resvg-py (tools/emoji/requirements.txt). About 4 minutes on one core.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 tools/emoji/build_dataset.py "$@"
