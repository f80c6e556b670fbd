# Shared by the study scripts (source it after `cd` to the repository root).

sp() { node bin/softpress.js "$@"; }

# train_once OUT [softpress train arguments...]: trains a compressor into OUT unless OUT already
# holds a finished one (compressor.json), resuming from OUT's checkpoint when there is one. The
# log goes to OUT.log; prints its last line, or the last five and fails.
train_once() {
  local out=$1
  shift
  local name
  name=$(basename "$out")
  [ -f "$out/compressor.json" ] && { echo "== $name: done"; return 0; }
  local resume=()
  [ -f "$out/checkpoint/state.json" ] && resume=(--resume)
  echo "== $name: softpress train $*"
  sp train "$@" --out "$out" "${resume[@]}" > "$out.log" 2>&1 || { echo "== $name: FAILED (see $out.log)"; tail -n 5 "$out.log"; return 1; }
  tail -n 1 "$out.log"
}
