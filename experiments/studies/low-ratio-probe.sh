#!/usr/bin/env bash
# Where does reconstruction break? GMSA and ICAE trained at ratio 1 (no compression: GMSA without
# merging) and ratio 2, stage 1 only, on 128-token passages, 200 steps of batch 4, lr 5e-4 (the
# GMSA study's stage-1 budget). Separates what the encoder + LSA path can carry from what the
# frozen decoder can read back out of merged soft tokens.
#   bash experiments/studies/low-ratio-probe.sh
# Results: results/softpress-base/gmsa-study/low-ratio/ (reconstruct report, ae-loss-128.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${BASE:-models/softpress-base}
RUNS=${RUNS:-runs/low-ratio}
OUT=${OUT:-results/softpress-base/gmsa-study/low-ratio}
source scripts/lib.sh
common=(--base "$BASE" --batch 4 --context-len 512 --continuation-len 64 --stage ae --ae-lengths 128 --steps 200 --lr 5e-4 --clip 2 --eval-every 1000000 --valid-batches 2 --checkpoint-every 50 --quiet)
mkdir -p "$RUNS" "$OUT"
for method in gmsa icae; do
  for ratio in 1 2; do
    train_once "$RUNS/$method-r$ratio" "${common[@]}" --method "$method" --ratio "$ratio"
  done
done
# Each compressor at the ratio it was trained for. ICAE at ratio 1 has too few slots (256) for the
# 512-token passages: eval lists those examples under Errors and still exits 0.
sp eval --base "$BASE" --task reconstruct --ratios 1 --n 16 --out "$OUT/reconstruct-r1" --quiet --methods "full,none,$RUNS/gmsa-r1,$RUNS/icae-r1"
sp eval --base "$BASE" --task reconstruct --ratios 2 --n 16 --out "$OUT/reconstruct-r2" --quiet --methods "$RUNS/gmsa-r2,$RUNS/icae-r2"
{
  sp losses --base "$BASE" --stage ae --ratio 1 --context-len 128 --batches 8 --batch 4 --methods "full,none,$RUNS/gmsa-r1,$RUNS/icae-r1"
  echo
  sp losses --base "$BASE" --stage ae --ratio 2 --context-len 128 --batches 8 --batch 4 --methods "$RUNS/gmsa-r2,$RUNS/icae-r2"
} > "$OUT/ae-loss-128.md"
cat "$OUT/ae-loss-128.md"
