#!/usr/bin/env bash
# Does GMSA's lead over ICAE in reconstruction hold, and grow, with three times the stage-1 budget?
# GMSA and ICAE trained exactly as in experiments/studies/gmsa-study.sh (stage 1 autoencoding, batch 4, ratios
# 4 and 8, passages of 128/256/512 tokens, lr 5e-4) but for 600 steps instead of 200; two lanes of
# one thread each. Then the same evaluations as the study: greedy restating (BLEU-4, ROUGE-L) on 16
# held-out passages per length, and the teacher-forced restate loss at each length.
#   bash experiments/studies/stage1-budget.sh            # train what is missing (resumes), then evaluate
#   PHASES=eval bash experiments/studies/stage1-budget.sh
# Results: results/softpress-base/gmsa-study/stage1-600/ (reconstruct/ report, ae-loss-{128,256,512}.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${BASE:-models/softpress-base}
RUNS=${RUNS:-runs/stage1-600}
OUT=${OUT:-results/softpress-base/gmsa-study/stage1-600}
STEPS=${STEPS:-600}
N_RECON=${N_RECON:-16}
PHASES=${PHASES:-train,eval}
source scripts/lib.sh
common=(--base "$BASE" --batch 4 --context-len 512 --continuation-len 64 --ratio 4,8 --eval-every 1000000 --valid-batches 2 --checkpoint-every 25 --quiet
  --stage ae --ae-lengths 128,256,512 --steps "$STEPS" --lr 5e-4 --clip 2)

if [[ $PHASES == *train* ]]; then
  mkdir -p "$RUNS"
  export SOFTPRESS_THREADS=1
  train_once "$RUNS/gmsa" "${common[@]}" --method gmsa &
  pa=$!
  train_once "$RUNS/icae" "${common[@]}" --method icae &
  pb=$!
  status=0
  wait $pa || status=1
  wait $pb || status=1
  [ $status = 0 ] || exit $status
fi

if [[ $PHASES == *eval* ]]; then
  unset SOFTPRESS_THREADS
  mkdir -p "$OUT"
  sp eval --base "$BASE" --task reconstruct --ratios 4,8 --n "$N_RECON" --out "$OUT/reconstruct" --quiet \
    --methods "full,none,$RUNS/gmsa,$RUNS/icae"
  for len in 128 256 512; do
    sp losses --base "$BASE" --stage ae --ratio 4,8 --context-len "$len" --batches 8 --batch 4 \
      --methods "full,none,$RUNS/gmsa,$RUNS/icae" > "$OUT/ae-loss-$len.md"
  done
  cat "$OUT"/ae-loss-*.md
fi
