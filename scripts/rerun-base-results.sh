#!/usr/bin/env bash
# Re-runs every result in the repository that depends on the default base model, after a new
# base has been shipped to models/softpress-base and scripts/train-compressors.sh has retrained
# the compressors against it. Each step writes its own files; a failed step is reported and the
# rest go on (exit status 1 at the end).
#   bash scripts/rerun-base-results.sh                      # all steps
#   STEPS="base,suite" bash scripts/rerun-base-results.sh   # some of them
# Steps, in this order (session 12, on this 2-core machine: study 63 min, base 13, qa 2, suite 26,
# stream 11; session 13: lowratio 21, budget 46):
#   study   bash experiments/studies/gmsa-study.sh: GMSA vs ICAE and its ablations -> results/softpress-base/gmsa-study/
#   base    the base alone -> results/softpress-base/base/: perplexity (test, valid), restate and pointer probes,
#           teacher-forced restate loss with and without the passage, samples (seeds 0-8)
#   qa      QA with the context in full or not at all -> results/softpress-base/base-qa/, results/softpress-base/base-babi50/
#   suite   softpress eval --suite default -> results/softpress-base/ (report.md, results.json, plots)
#   stream  softpress stream-eval (CCF and mean-pool memory vs sliding window) -> results/softpress-base/stream.md
#   lowratio bash experiments/studies/low-ratio-probe.sh: GMSA and ICAE at ratios 1 and 2 -> results/softpress-base/gmsa-study/low-ratio/
#   budget  bash experiments/studies/stage1-budget.sh: GMSA and ICAE at 600 stage-1 steps -> results/softpress-base/gmsa-study/stage1-600/
set -uo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-models/softpress-base}
STEPS=${STEPS:-study,base,qa,suite,stream,lowratio,budget}
source scripts/lib.sh
status=0
step() { # name, then a command; times it and keeps going on failure
  local name=$1
  shift
  [[ ,$STEPS, == *,$name,* ]] || return 0
  echo "== $name: $* ($(date -u +%H:%M:%S))"
  local t0=$SECONDS
  if "$@"; then echo "== $name: done in $((SECONDS - t0)) s"; else echo "== $name: FAILED after $((SECONDS - t0)) s" >&2; status=1; fi
}

base_alone() {
  mkdir -p results/softpress-base/base
  sp eval --task perplexity --split test --base "$BASE" --out results/softpress-base/base/perplexity-test --quiet &&
    sp eval --task perplexity --split valid --base "$BASE" --out results/softpress-base/base/perplexity-valid --quiet &&
    node experiments/probes/restate-probe.mjs "$BASE" 16 1200 > results/softpress-base/base/restate-probe.txt &&
    node experiments/probes/pointer-probe.mjs "$BASE" 5 0 64 > results/softpress-base/base/pointer-probe.txt &&
    sp losses --base "$BASE" --methods full,none --ratio 4 --stage ae --batches 8 --batch 4 > results/softpress-base/base/restate-loss-256.md &&
    for seed in 0 1 2 3 4 5 6 7 8; do
      echo "--- seed $seed"
      sp generate --model "$BASE" --prompt "Fellow citizens" --max-tokens 60 --seed "$seed" || return 1
      echo
    done > results/softpress-base/base/samples-seeds-0-8.txt
}

qa() {
  sp eval --base "$BASE" --task babi,needle,cloze --methods full,none --split valid --out results/softpress-base/base-qa --quiet &&
    sp eval --base "$BASE" --task babi --n 50 --methods full,none --split valid --out results/softpress-base/base-babi50 --quiet
}

step study bash experiments/studies/gmsa-study.sh
step base base_alone
step qa qa
step suite sp eval --base "$BASE" --suite default --out results/softpress-base --quiet
step stream sp stream-eval --base "$BASE" --ccf models/ccf --meanpool models/meanpool-r4 --lengths 1024,2048,4096,8192 --docs 3 --ratios 8,32 --out results/softpress-base/stream.md
step lowratio bash experiments/studies/low-ratio-probe.sh
step budget bash experiments/studies/stage1-budget.sh
exit $status
