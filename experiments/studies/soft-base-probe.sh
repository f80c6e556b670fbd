#!/usr/bin/env bash
# Does a base that was taught to read group means of embeddings (pretraining's `softRestate` rows,
# experiments/pretrain/soft-restate.ts) let GMSA restate from merged soft tokens, and does it separate GMSA
# from ICAE? Both trained at ratio 4, stage 1 only, on 128-token passages, 200 steps of batch 4,
# lr 5e-4 (the budget of experiments/studies/low-ratio-probe.sh), on BASE; then BLEU and the teacher-forced
# restate loss on the same valid passages.
#   BASE=runs/soft-restate2/model bash experiments/studies/soft-base-probe.sh
# Results: $OUT (reconstruct report, ae-loss-128.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${BASE:?set BASE to the model folder to probe}
RUNS=${RUNS:-runs/soft-base}
OUT=${OUT:-results/softpress-base/gmsa-study/soft-base}
source scripts/lib.sh
common=(--base "$BASE" --batch 4 --context-len 512 --continuation-len 64 --stage ae --ae-lengths 128 --ratio 4 --steps 200 --lr 5e-4 --clip 2 --eval-every 1000000 --valid-batches 2 --checkpoint-every 50 --quiet)
mkdir -p "$RUNS" "$OUT"
lane() { # method
  train_once "$RUNS/$1-r4" "${common[@]}" --method "$1"
}
export SOFTPRESS_THREADS=1
lane gmsa & pa=$!
lane icae & pb=$!
status=0
wait $pa || status=1
wait $pb || status=1
[ $status = 0 ] || exit $status
unset SOFTPRESS_THREADS
sp eval --base "$BASE" --task reconstruct --ratios 4 --n 16 --out "$OUT/reconstruct" --quiet --methods "full,none,$RUNS/gmsa-r4,$RUNS/icae-r4"
sp losses --base "$BASE" --stage ae --ratio 4 --context-len 128 --batches 8 --batch 4 --methods "full,none,$RUNS/gmsa-r4,$RUNS/icae-r4" > "$OUT/ae-loss-128.md"
cat "$OUT/ae-loss-128.md"
