#!/usr/bin/env bash
# Builds llama.cpp's CPU tools for the reference fixtures (test/fixtures/smollm2/) and for
# speed comparisons, from the llama.cpp sources vendored in PyPI's llama-cpp-python sdist
# (package registries are the only network we rely on).
#
#   scripts/reference/build-llamacpp.sh        # prints the bin directory last
#
# Pinned: llama-cpp-python==0.3.36 (sdist sha256 below), which vendors llama.cpp at commit
#   0c1e57098bba43ac29e6e3b677cdceebdd22334f  ("webgpu: fix SSM_SCAN binding aliasing (#29750)")
# The sdist ships the submodule's git metadata (vendor/llama.cpp/.git -> .git/modules/...):
# `git -C vendor/llama.cpp rev-parse HEAD` gives that commit and `git status` is clean, i.e. the
# vendored files are exactly that commit (also named by the sdist's CHANGELOG.md: "update
# llama.cpp to ggml-org/llama.cpp@0c1e57098"). The history is shallow, so there is no b<N>
# release number: the tools report "version: 0.5.0-dev (build 0, commit 0c1e570)".
# A full build of the targets below took 22 minutes (1314 s) on 2 cores.
#
# Output: ${SOFTPRESS_HOME:-$HOME/.cache/softpress}/llama.cpp/0.3.36/
#   llama_cpp_python-0.3.36.tar.gz   the sdist      src/   extracted     build/   cmake tree
#   build/bin/                       llama-bench, llama-tokenize, llama-simple, the shared
#                                    libraries, and softpress-llamacpp-ref (our own small program,
#                                    scripts/reference/llamacpp-ref.cpp, linked to libllama)
# Idempotent: skips the download, extraction and cmake build when done (a stamp records the
# configuration); recompiles llamacpp-ref only when its source changed.
# Environment: JOBS (default 2).
set -euo pipefail

VERSION=0.3.36
SDIST=llama_cpp_python-$VERSION.tar.gz
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_COMMIT=0c1e57098bba43ac29e6e3b677cdceebdd22334f
JOBS=${JOBS:-2}
TARGETS=(llama-bench llama-tokenize llama-simple)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=${SOFTPRESS_HOME:-$HOME/.cache/softpress}/llama.cpp/$VERSION
SRC=$ROOT/src
LLAMA=$SRC/vendor/llama.cpp
BUILD=$ROOT/build
BIN=$BUILD/bin
mkdir -p "$ROOT"

log() { echo "build-llamacpp: $*" >&2; }

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SDIST_SHA256" ]; }

# 1. the sdist, from PyPI through pip
if ! sha_ok "$ROOT/$SDIST"; then
  log "downloading $SDIST from PyPI"
  rm -f "$ROOT/$SDIST"
  python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$ROOT" >&2
  sha_ok "$ROOT/$SDIST" || { log "sha256 mismatch for $ROOT/$SDIST (want $SDIST_SHA256)"; exit 1; }
fi

# 2. extract
if [ ! -f "$SRC/.extracted" ]; then
  log "extracting into $SRC"
  rm -rf "$SRC"
  mkdir -p "$SRC"
  tar xzf "$ROOT/$SDIST" -C "$SRC" --strip-components=1
  touch "$SRC/.extracted"
fi
if command -v git > /dev/null && head=$(git -C "$LLAMA" rev-parse HEAD 2> /dev/null); then
  [ "$head" = "$LLAMA_COMMIT" ] || { log "vendored llama.cpp is $head, expected $LLAMA_COMMIT"; exit 1; }
fi

# 3. configure and build only the CPU targets we use (no curl/openssl, no GPU, no server/tests)
CMAKE_ARGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=ON
  -DGGML_NATIVE=ON
  -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_OPENCL=OFF -DGGML_RPC=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=ON
  -DLLAMA_BUILD_NUMBER=0 "-DLLAMA_BUILD_COMMIT=${LLAMA_COMMIT:0:7}"
)
STAMP=$BUILD/.softpress-built
want="$LLAMA_COMMIT ${CMAKE_ARGS[*]} ${TARGETS[*]}"
built=true
[ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] || built=false
for t in "${TARGETS[@]}"; do [ -x "$BIN/$t" ] || built=false; done
if ! $built; then
  log "building ${TARGETS[*]} with -j$JOBS (takes a while on 2 cores)"
  start=$(date +%s)
  cmake -S "$LLAMA" -B "$BUILD" "${CMAKE_ARGS[@]}" >&2
  cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}" >&2
  echo "$want" > "$STAMP"
  log "cmake build took $(($(date +%s) - start)) s"
fi

# 4. our program against libllama (logits, greedy decoding, tokenization as JSON)
REF_SRC=$HERE/llamacpp-ref.cpp
REF_BIN=$BIN/softpress-llamacpp-ref
if [ ! -x "$REF_BIN" ] || [ "$REF_SRC" -nt "$REF_BIN" ] || [ "$STAMP" -nt "$REF_BIN" ]; then
  log "compiling $REF_BIN"
  g++ -O2 -std=c++17 -Wall -DSOFTPRESS_LLAMA_COMMIT="\"$LLAMA_COMMIT\"" -o "$REF_BIN" "$REF_SRC" \
    -I "$LLAMA/include" -I "$LLAMA/ggml/include" \
    -L "$BIN" -lllama -lggml -lggml-base -Wl,-rpath,"$BIN" -lpthread
fi

echo "$BIN"
