#!/usr/bin/env bash
# softpress against the tuned PyTorch anchor of ../shared/bench-spec.md, in one run, as ratios.
#
#   bash scripts/bench-vs-torch.sh [engine|S|M|smol ...]      (default: engine S M smol)
#
# Each benchmark runs on both sides, alternating (softpress, torch, softpress, torch) so that a
# change in the machine's load hits both; the figure of each side is the better of its two runs.
# PYTHON picks the interpreter with torch (default: /usr/bin/python3 with Debian's python3-torch;
# PYTHONPATH=<unpacked PyPI wheel> for torch 2.x). THREADS (default 2), REPS (default 5).
# Prints one table; the raw JSON lines go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
THREADS=${THREADS:-2}
REPS=${REPS:-5}
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  echo "bench-vs-torch: $PYTHON has no torch (sudo apt-get install python3-torch, or PYTHON=...)" >&2
  exit 1
fi
[ -f dist/src/cli/main.js ] || npm run build:ts >/dev/null
# The anchor's tuning (bench-spec.md): a passive OpenMP pool and malloc that keeps big buffers.
TUNED=(env OMP_WAIT_POLICY=PASSIVE GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(engine S M smol)

ours() { # what
  if [ "$1" = engine ]; then node bin/softpress.js bench engine --json --threads "$THREADS" --reps $((REPS * 6)) 2>/dev/null | tail -1
  else node bin/softpress.js bench model --config "$1" --json --threads "$THREADS" --reps "$REPS" 2>/dev/null | tail -1; fi
}
theirs() { # what
  "${TUNED[@]}" "$PYTHON" scripts/reference/bench_torch.py "$1" --threads "$THREADS" --reps $([ "$1" = engine ] && echo $((REPS * 6)) || echo "$REPS") 2>/dev/null | tail -1
}

rows=()
for t in "${targets[@]}"; do
  a1=$(ours "$t"); echo "softpress $a1" >&2
  b1=$(theirs "$t"); echo "torch     $b1" >&2
  a2=$(ours "$t"); echo "softpress $a2" >&2
  b2=$(theirs "$t"); echo "torch     $b2" >&2
  rows+=("$(node -e '
    const [t, ...js] = process.argv.slice(1);
    const [a1, b1, a2, b2] = js.map((s) => JSON.parse(s));
    const keys = t === "engine" ? ["matmul_gflops"] : ["train_tok_s", "prefill_tok_s", "frozen_tok_s", "decode_tok_s"];
    for (const k of keys) {
      const a = Math.max(a1[k], a2[k]), b = Math.max(b1[k], b2[k]);
      console.log(`| ${t} | ${k} | ${a} | ${b} | ${(a / b).toFixed(2)}x |`);
    }' "$t" "$a1" "$b1" "$a2" "$b2")")
done
torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)')
echo "softpress vs PyTorch $torch_version (tuned), $THREADS threads, $(date -u +%F)"
echo "| bench | figure | softpress | torch | ratio |"
echo "|---|---|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
