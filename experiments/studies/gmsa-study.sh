#!/usr/bin/env bash
# GMSA against ICAE and its ablations at our scale (issue: GMSA), after scripts/train-compressors.sh
# has trained the method itself ($RUNS/gmsa: stage 1, $RUNS/gmsa-qa: stage 2).
#   bash experiments/studies/gmsa-study.sh          # train what is missing (two lanes), then evaluate
#   PHASES=eval bash experiments/studies/gmsa-study.sh
# Every variant gets the same budget as GMSA: stage 1 autoencoding, 200 steps of batch 4 at ratios
# 4 and 8 on passages of 128/256/512 tokens, lr 5e-4; stage 2 QA, 80 steps, lr 1e-4.
#   strided  no group merging: every r-th encoder state (the last token of each group)
#   queries  no uniform merging: learned softmax pooling within each group
#   nolsa    no LSA block: merged states go to the decoder through the final norm only
#   noae     no autoencoder pretraining: stage 2 straight from the untrained encoder and LSA
#   icae     the ICAE baseline (memory tokens appended to the context, encoder LoRA)
# Results: results/softpress-base/gmsa-study/{reconstruct,qa}/ (report.md, results.json, plots) and
# results/softpress-base/gmsa-study/ae-loss-{128,256,512}.md: the teacher-forced restate loss (nats per token) of every
# stage-1 variant on the same valid passages — it ranks compressors even when greedy restating
# (BLEU) fails for all of them, as with a base that does not copy well.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${BASE:-models/softpress-base}
BABI=${BABI:-../shared/fixtures/babi/en-10k}
RUNS=${RUNS:-runs}
STUDY=$RUNS/gmsa-study
OUT=${OUT:-results/softpress-base/gmsa-study}
STEPS_DIV=${STEPS_DIV:-1}
N_RECON=${N_RECON:-16}
N_QA=${N_QA:-}
PHASES=${PHASES:-train,eval}
source scripts/lib.sh
steps() { local n=$(( $1 / STEPS_DIV )); echo $(( n > 2 ? n : 2 )); }
common=(--base "$BASE" --batch 4 --context-len 512 --continuation-len 64 --ratio 4,8 --eval-every 1000000 --valid-batches 2 --checkpoint-every 25 --quiet)
ae=(--stage ae --ae-lengths 128,256,512 --steps "$(steps 200)" --lr 5e-4 --clip 2)
qa=(--stage qa --babi "$BABI" --steps "$(steps 80)" --lr 1e-4 --clip 2)

for need in "$RUNS/gmsa/compressor.json" "$RUNS/gmsa-qa/compressor.json"; do
  [ -f "$need" ] || { echo "missing $need: run scripts/train-compressors.sh first" >&2; exit 1; }
done

run() { # name, then train arguments
  local name=$1
  shift
  train_once "$STUDY/$name" "${common[@]}" "$@"
}

lane_a() {
  run gmsa-strided --method gmsa --method-option merge=strided "${ae[@]}"
  run gmsa-strided-qa --method gmsa --init "$STUDY/gmsa-strided" "${qa[@]}"
  run gmsa-queries --method gmsa --method-option merge=queries "${ae[@]}"
  run gmsa-queries-qa --method gmsa --init "$STUDY/gmsa-queries" "${qa[@]}"
}

lane_b() {
  run gmsa-nolsa --method gmsa --method-option lsa=false "${ae[@]}"
  run gmsa-nolsa-qa --method gmsa --init "$STUDY/gmsa-nolsa" "${qa[@]}"
  run icae-ae --method icae "${ae[@]}"
  run icae-ae-qa --method icae --init "$STUDY/icae-ae" "${qa[@]}"
  run gmsa-noae-qa --method gmsa "${qa[@]}"
}

if [[ $PHASES == *train* ]]; then
  mkdir -p "$STUDY"
  export SOFTPRESS_THREADS=1
  lane_a > "$STUDY/lane-a.log" 2>&1 &
  pa=$!
  lane_b > "$STUDY/lane-b.log" 2>&1 &
  pb=$!
  status=0
  wait $pa || status=1
  wait $pb || status=1
  cat "$STUDY/lane-a.log" "$STUDY/lane-b.log"
  [ $status = 0 ] || exit $status
fi

if [[ $PHASES == *eval* ]]; then
  unset SOFTPRESS_THREADS
  # Reconstruction after stage 1 (noae-qa: the untrained encoder, for reference).
  sp eval --base "$BASE" --task reconstruct --ratios 4,8 --n "$N_RECON" --out "$OUT/reconstruct" \
    --methods "full,none,$RUNS/gmsa,$STUDY/gmsa-strided,$STUDY/gmsa-queries,$STUDY/gmsa-nolsa,$STUDY/gmsa-noae-qa,$STUDY/icae-ae"
  mkdir -p "$OUT"
  # Teacher-forced reconstruction loss at each length and ratio (same batches for every method).
  for len in 128 256 512; do
    sp losses --base "$BASE" --stage ae --ratio 4,8 --context-len "$len" --batches "${AE_BATCHES:-8}" --batch 4 \
      --methods "full,none,$RUNS/gmsa,$STUDY/gmsa-strided,$STUDY/gmsa-queries,$STUDY/gmsa-nolsa,$STUDY/gmsa-noae-qa,$STUDY/icae-ae" > "$OUT/ae-loss-$len.md"
  done
  # QA after stage 2.
  sp eval --base "$BASE" --task babi,needle,cloze --data "$BABI" --ratios 4,8 ${N_QA:+--n "$N_QA"} --out "$OUT/qa" \
    --methods "full,none,$RUNS/gmsa-qa,$STUDY/gmsa-strided-qa,$STUDY/gmsa-queries-qa,$STUDY/gmsa-nolsa-qa,$STUDY/gmsa-noae-qa,$STUDY/icae-ae-qa"
fi
