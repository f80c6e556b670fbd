#!/usr/bin/env bash
# Trains every shipped compressor on the default base model, in two lanes of one thread each
# (the machine has two cores), then writes each in final form (fp16) under models/.
#   bash scripts/train-compressors.sh            # all
#   LANES="a" bash scripts/train-compressors.sh  # one lane
# Runs go to runs/<name>/ (checkpoints, log.jsonl, loss.svg); re-running resumes them.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-models/softpress-base}
BABI=${BABI:-../shared/fixtures/babi/en-10k}
RUNS=${RUNS:-runs}
MODELS=${MODELS:-models}
STEPS_DIV=${STEPS_DIV:-1}   # e.g. 50 for a smoke test
source scripts/lib.sh
steps() { local n=$(( $1 / STEPS_DIV )); echo $(( n > 2 ? n : 2 )); }
common=(--base "$BASE" --batch 4 --context-len 256 --continuation-len 64 --eval-every 1000000 --valid-batches 2 --checkpoint-every 25 --quiet)

run() { # name, then train arguments; a failed run is reported and the lane goes on
  local name=$1
  shift
  local resume=()
  [ -f "$RUNS/$name/checkpoint/state.json" ] && resume=(--resume)
  echo "== $name: softpress train $*" >&2
  if sp train "${common[@]}" --out "$RUNS/$name" "${resume[@]}" "$@" > "$RUNS/$name.log" 2>&1; then
    tail -n 2 "$RUNS/$name.log"
    sp ship --base "$BASE" --compressor "$RUNS/$name" --out "$MODELS/$name" || echo "== $name: ship FAILED" >&2
  else
    echo "== $name: FAILED (see $RUNS/$name.log)" >&2
    tail -n 5 "$RUNS/$name.log" >&2
  fi
}

lane_a() {
  run meanpool-r4 --method meanpool --ratio 4 --stage ae:0.5,lm:0.5 --steps "$(steps 150)" --lr 2e-3
  run icae-r4 --method icae --ratio 4 --stage ae:0.5,lm:0.5 --steps "$(steps 150)" --lr 1e-3
  # GMSA: stage 1 autoencoding on passages of 128/256/512 tokens, stage 2 QA (decoder W_Q/K/V delta).
  run gmsa --method gmsa --ratio 4,8 --stage ae --context-len 512 --ae-lengths 128,256,512 --steps "$(steps 200)" --lr 5e-4 --clip 2
  run gmsa-qa --method gmsa --init "$RUNS/gmsa" --ratio 4,8 --stage qa --context-len 512 --babi "$BABI" --steps "$(steps 80)" --lr 1e-4 --clip 2
}

lane_b() {
  run comprexit --method comprexit --ratio 4,8 --stage lm --steps "$(steps 200)" --lr 1e-3 --clip 20
  run ccf --method ccf --ratio 8,32 --stage lm --steps "$(steps 120)" --batch 1 --lr 1e-3 --method-option segmentLen=64
  run comprexit-qa --method comprexit --init "$RUNS/comprexit" --ratio 4,8 --stage qa --babi "$BABI" --steps "$(steps 80)" --lr 5e-4 --clip 20
}

export SOFTPRESS_THREADS=1
LANES=${LANES:-ab}
pids=()
mkdir -p "$RUNS" "$MODELS"
[[ $LANES == *a* ]] && { lane_a > "$RUNS/lane-a.log" 2>&1 & pids+=($!); }
[[ $LANES == *b* ]] && { lane_b > "$RUNS/lane-b.log" 2>&1 & pids+=($!); }
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
