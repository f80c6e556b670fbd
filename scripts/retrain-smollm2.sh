#!/usr/bin/env bash
# Trains every learned method over SmolLM2-135M-Instruct (issue #31), resumably: run it again after
# any interruption and each stage continues from its last checkpoint; finished stages are skipped.
#
#   bash scripts/retrain-smollm2.sh [RUNS_DIR] [METHOD ...]
#
# RUNS_DIR defaults to $SOFTPRESS_HOME/runs/smollm2 (~/.cache/softpress/runs/smollm2). Steps and
# lengths are the CPU budget of a 2-core machine, chosen from measured loss-vs-time curves (see the
# model cards in models/*-smollm2/); each stage's loss.svg shows the valid loss against the
# full-context and no-context references measured on the same batches.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-${SOFTPRESS_HOME:-$HOME/.cache/softpress}/runs/smollm2}"
shift || true
METHODS=("$@")
[ ${#METHODS[@]} -gt 0 ] || METHODS=(comprexit meanpool icae ccf gmsa)
mkdir -p "$RUNS"
SP=(node bin/softpress.js)
BABI=../shared/fixtures/babi/en-10k
COMMON=(--base smollm2-135m-instruct --lr 1e-3 --warmup 10 --checkpoint-every 10 --eval-every 20 --valid-batches 2 --quiet --resume)

# stage NAME ARGS...: one training stage into $RUNS/NAME, skipped once it has shipped its compressor.json.
stage() {
  local name=$1
  shift
  if [ -f "$RUNS/$name/compressor.json" ]; then
    echo "== $name: done"
    return
  fi
  echo "== $name: $(date -u +%FT%TZ)"
  "${SP[@]}" train "${COMMON[@]}" --out "$RUNS/$name" "$@"
}

# Stage 1 teaches a method to carry the context (autoencoding and/or continuation); stage 2 tunes
# it for questions on bAbI's training stories, starting from stage 1.
two_stage() {
  local method=$1 s1=$2
  stage "$method-s1" --method "$method" --ratio 4,8 --stage "$s1" --steps 100 --batch 4 --context-len 128 --continuation-len 64 --babi "$BABI"
  stage "$method-s2" --method "$method" --ratio 4,8 --stage qa --steps 200 --batch 4 --context-len 128 --babi "$BABI" --init "$RUNS/$method-s1"
}

for m in "${METHODS[@]}"; do
  case $m in
    comprexit) two_stage comprexit lm ;;
    gmsa) two_stage gmsa ae ;;
    icae) two_stage icae ae+lm ;;
    meanpool) two_stage meanpool ae+lm ;;
    # CCF is a long-document language model: 256-token segments, documents of 4 segments, 8x;
    # a second stage of 200 steps continues the first (valid ppl 42.0 -> 39.2, models/ccf-smollm2).
    ccf)
      stage ccf-lm --method ccf --ratio 8 --stage lm --steps 80 --batch 2 --doc-len 1024 --method-option segmentLen=256 --method-option rank=16 --method-option alpha=64
      stage ccf-long --method ccf --ratio 8 --stage lm --steps 200 --batch 2 --doc-len 1024 --init "$RUNS/ccf-lm"
      ;;
    *)
      echo "unknown method $m" >&2
      exit 2
      ;;
  esac
done
echo "== all done: $(date -u +%FT%TZ)"
