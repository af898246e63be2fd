#!/usr/bin/env bash
# Exercises the server's page (GET /) once in headless Chromium, as a person would: picks
# the example content and style images, the fast preset and a gamma, submits, waits for
# the result image, checks it, and saves a screenshot (default docs/serve_page.png).
# Needs Debian's chromium (apt-get install chromium) and npm (it installs playwright-core
# under target/page-shot; no browser download). Not run in CI.
#
#     tools/page_screenshot.sh [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/serve_page.png}
BIN=${BIN:-target/release/diffstyle}
MODEL=${MODEL:-tests/fixtures/method/model}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] || { echo "needs Chromium at $CHROMIUM (Debian: apt-get install chromium)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build first: cargo build --release ($BIN missing)" >&2; exit 1; }
DIR=target/page-shot
mkdir -p "$DIR"
if [ ! -d "$DIR/node_modules/playwright-core" ]; then
    (cd "$DIR" && npm install --no-save --no-audit --no-fund --silent playwright-core@1)
fi
LOG="$DIR/server.log"
"$BIN" --device cpu serve --model "$MODEL" --addr 127.0.0.1:0 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 200); do
    URL=$(sed -n 's/^listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$LOG")
    [ -n "$URL" ] && break
    kill -0 $PID 2>/dev/null || { cat "$LOG" >&2; exit 1; }
    sleep 0.1
done
[ -n "$URL" ] || { echo "the server did not start" >&2; exit 1; }
NODE_PATH="$DIR/node_modules" CHROMIUM="$CHROMIUM" node tools/page_screenshot.cjs "$URL/" "$OUT"
kill -TERM $PID
wait $PID
trap - EXIT
echo "server exited cleanly; screenshot: $OUT"
