#!/usr/bin/env bash
# CI check of tools/device_session.sh's plumbing, without a GPU: its --dry-run (the host
# emulator, the fixture model, target/debug binaries; needs a `cargo test` build) must
#   1. run end to end and exit 0, with a valid $OUT/summary.json whose steps come in the
#      session's order (info, the lib's cuda_* tests, gpu_cuda's, its DDPM-256 forward,
#      ours forward, the fast pair, ...), the PyTorch steps skipped, and <= 8 files in $OUT;
#   2. under a tiny DEADLINE_S with a step longer than it (DRY_SLOW_S): cut that step,
#      skip the rest, still write a valid summary and exit 1;
#   3. killed (SIGKILL) in the middle: leave a valid summary of the steps done so far.
# Exits non-zero, saying what broke, when any of this fails.
set -uo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d /tmp/ds_check.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "check_device_session: FAILED: $*" >&2; exit 1; }
check() { # OUT expected-state python-assertions...
    python3 - "$1" "$2" <<'PY' || fail "summary check of $1 (see above)"
import json, os, sys
out, state = sys.argv[1], sys.argv[2]
s = json.load(open(os.path.join(out, "summary.json")))
names = [x["name"] for x in s["steps"]]
st = {x["name"]: x["status"] for x in s["steps"]}
files = os.listdir(out)
assert len(files) <= 8, f"{len(files)} files in {out}: {files}"
assert s["mode"] == "dry-run", s["mode"]
assert s["state"] == state, f"state {s['state']!r}, expected {state!r}"
for x in s["steps"]:
    assert set(x) == {"name", "status", "rc", "seconds", "timeout_s", "key", "tail"}, x
    assert x["status"] in ("ok", "failed", "timeout", "skipped"), x
if state == "done":
    order = ["nvidia-smi", "info", "lib:", "gpu_cuda:", "gpu_cuda:ddpm256_forward_vs_cpu", "ours:forward-b1",
             "torch:eager-b1", "ours:pair-fast", "torch:pair-fast", "ours:throughput", "torch:compile-b1",
             "ours:pair-in-domain", "kernels", "sanitizer", "report"]
    pos = [next((i for i, n in enumerate(names) if n == o or (o.endswith(":") and n.startswith(o))), None)
           for o in order]
    assert None not in pos, f"missing step(s): {[o for o, p in zip(order, pos) if p is None]} in {names}"
    assert pos == sorted(pos), f"steps out of order: {names}"
    bad = {n: x for n, x in st.items() if x in ("failed", "timeout")}
    assert not bad, f"steps not ok: {bad}"
    for n in ("info", "gpu_cuda:ddpm256_forward_vs_cpu", "ours:forward-b1", "ours:pair-fast"):
        assert st[n] == "ok", f"{n}: {st[n]}"
    assert all(st[n] == "skipped" for n in names if n.startswith("torch:")), st
    assert sum(n.startswith("lib:cuda") or ":cuda_" in n for n in names) >= 1, f"no lib cuda_* test: {names}"
    assert "session.tar.gz" in files and "session.log" in files, files
    assert "bf16" in next(x["key"] for x in s["steps"] if x["name"] == "ours:forward-b1"), "no bf16 timing in the key"
elif state == "out of time":
    i = names.index("dry:slow")
    assert st["info"] == "ok" and st["dry:slow"] == "timeout", st
    assert names[i + 1:] and all(st[n] == "skipped" for n in names[i + 1:]), st
elif state == "running":
    assert st.get("info") == "ok", f"a killed run's summary lacks info: {st}"
print(f"  {out}: {len(names)} steps, state {s['state']}, {len(files)} files: ok")
PY
}

echo "== 1. full dry run"
t=$(date +%s)
OUT="$tmp/full" bash tools/device_session.sh --dry-run >"$tmp/full.txt" 2>&1
rc=$?
echo "  exit $rc in $(($(date +%s) - t)) s"
[ "$rc" = 0 ] || { tail -40 "$tmp/full.txt"; fail "the dry run exited $rc"; }
check "$tmp/full" done
listing=$(tar -tzf "$tmp/full/session.tar.gz") || fail "session.tar.gz is not a readable archive"
grep -q 'logs/info.log' <<<"$listing" || fail "session.tar.gz lacks logs/info.log"

echo "== 2. deadline cut"
OUT="$tmp/cut" DEADLINE_S=15 RESERVE_S=0 DRY_SLOW_S=60 bash tools/device_session.sh --dry-run >"$tmp/cut.txt" 2>&1
rc=$?
echo "  exit $rc"
[ "$rc" = 1 ] || { tail -20 "$tmp/cut.txt"; fail "a cut run exited $rc, expected 1"; }
check "$tmp/cut" "out of time"

echo "== 3. killed mid-run"
OUT="$tmp/killed" DRY_SLOW_S=60 setsid bash tools/device_session.sh --dry-run >"$tmp/killed.txt" 2>&1 &
pid=$!
for _ in $(seq 60); do grep -q 'dry:slow (timeout' "$tmp/killed.txt" 2>/dev/null && break; sleep 0.5; done
# The whole session: the script and its step (timeout runs it in a group of its own).
kill -KILL $(ps -o pid= -s "$pid") 2>/dev/null
wait "$pid" 2>/dev/null
# A killed session cannot remove its work folder: do it here.
w=$(sed -n 's/.*, work \(\/tmp\/ds_session\.[A-Za-z0-9]*\)$/\1/p' "$tmp/killed.txt" | head -1)
[ -n "$w" ] && rm -rf "$w"
check "$tmp/killed" running
echo "check_device_session: ok"
