#!/usr/bin/env bash
# Proof that the default `cargo test` still catches kernel bugs that hardware would
# punish: each mutation below is applied to a real kernel in turn, `cargo test` must
# fail, and its output must show the expected message (the emulator check's name and
# the kernel's source line, or the per-op test that saw the poisoned output). The file
# is restored after each run (also on Ctrl-C). Not run by CI (a rebuild per mutation,
# ~1.5 min each on 2 cores); rerun it after changing the emulator, its checks or the
# per-op tests.
#
#   bash tools/check_mutations.sh            # every mutation
#   bash tools/check_mutations.sh conv_barrier step_tail
#
# DS_SKIP_NVCC=1: the fatbin plays no part in tests on a machine without a GPU, and
# skipping it halves each rebuild. Logs: $LOGS (default target/mutations/).
set -uo pipefail
cd "$(dirname "$0")/.."
export DS_SKIP_NVCC=1
LOGS=${LOGS:-target/mutations}
mkdir -p "$LOGS"

# name | file | original text (must occur exactly once) | mutated text | expected output (grep -E)
MUTATIONS=(
  "conv_barrier|kernels/conv.cu|        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)|    }
#pragma unroll
    for (int i = 0; i < 4; i++)|emu check \`race\`: kernel conv2d_f32, .* at kernels/conv.cu:[0-9]+"
  "attention_wait|kernels/attention.cu|cp_async_wait<NST - 2>();  // this thread's copies of stage st have landed
        __syncthreads();           // everyone's have; stage st - 1 is done with its buffer
        issue(st + NST - 1);       // refills that buffer
        const float* buf = ring + (st % NST) * DC * BK;|cp_async_wait<NST - 1>();  // this thread's copies of stage st have landed
        __syncthreads();           // everyone's have; stage st - 1 is done with its buffer
        issue(st + NST - 1);       // refills that buffer
        const float* buf = ring + (st % NST) * DC * BK;|emu check \`race\`: kernel attention_f32_d128, .* at kernels/(attention.cu|mma.cuh):[0-9]+"
  "norm_barrier|kernels/norm.cu|    __syncthreads();  // \`red\` may be reused at once|    // \`red\` may be reused at once|emu check \`race\`: kernel group_norm_f32, .* at kernels/norm.cu:[0-9]+"
  "resample_tail|kernels/resample.cu|e < len;|e <= len;|emu check \`mem\`: kernel resample_f32, .*kernels/resample.cu:[0-9]+"
  "step_tail|kernels/step.cu|if (e + 1 < len) o[e + 1]|if (e + 1 <= len) o[e + 1]|ddim_step_matches_cpu.*FAILED|output not fully written"
  "norm_tail|kernels/norm.cu|t < len; t += nt) acc1|t <= len; t += nt) acc1|group_norm_.* FAILED"
)

only=" $* "
backup=""
restore() { [ -n "$backup" ] && cp "$backup" "${backup%.orig}" && rm -f "$backup"; backup=""; }
trap 'restore; exit 130' INT TERM
trap restore EXIT

failed=0
for m in "${MUTATIONS[@]}"; do
  IFS='|' read -r -d '' name file from to want < <(printf '%s\0' "$m")
  [ "$#" -eq 0 ] || [[ "$only" == *" $name "* ]] || continue
  python3 - "$file" "$from" "$to" <<'PY' || { echo "$name: cannot apply (text not found once in $file)"; failed=1; continue; }
import sys
path, old, new = sys.argv[1:]
s = open(path).read()
if s.count(old) != 1:
    sys.exit(1)
open(path + ".orig", "w").write(s)
open(path, "w").write(s.replace(old, new))
PY
  backup="$file.orig"
  log="$LOGS/$name.log"
  echo "== $name ($file)"
  diff "$file.orig" "$file" | sed 's/^/   /'
  start=$(date +%s)
  cargo test >"$log" 2>&1
  rc=$?
  restore
  took=$(($(date +%s) - start))
  if [ "$rc" -eq 0 ]; then
    echo "   NOT CAUGHT: cargo test passed (${took} s); log $log"
    failed=1
  elif grep -Eq -- "$want" "$log"; then
    echo "   caught: cargo test exit $rc in ${took} s; first matching line:"
    grep -Eo -- "$want" "$log" | head -1 | cut -c1-400 | sed 's/^/   /'
    grep -E "^test .* FAILED$" "$log" | head -3 | sed 's/^/   /'
  else
    echo "   FAILED, but without the expected message /$want/ (exit $rc); log $log"
    failed=1
  fi
done
exit $failed
