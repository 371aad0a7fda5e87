#!/usr/bin/env bash
# Prepares the Python side of the interop tests and the benchmark:
#   1. creates the virtualenv <repo>/.venv if it is missing,
#   2. installs Tests/requirements.txt into it (skipped when a stamp file shows
#      the same requirements were already installed),
#   3. generates Python modules for proto/grpc_testing/*.proto into
#      Tests/Interop/python/generated/ (gitignored; regenerated when a proto is
#      newer than the generated output or the toolchain changed).
# Idempotent and safe to run from any directory. Prints one line per action.
set -euo pipefail

# Resolve the repository root from this script's own location (Tests/..).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

VENV="$REPO_ROOT/.venv"
REQUIREMENTS="Tests/requirements.txt"
STAMP="$VENV/.requirements.sha256"
PROTO_DIR="proto"
OUT_DIR="Tests/Interop/python/generated"
PY="$VENV/bin/python"

log() { echo "python-env: $*"; }

# Serialise concurrent runs (e.g. both interop scripts started in parallel):
# two pip installs or two regenerations into the same directory would race.
# The lock lives outside the repo so it needs no .gitignore entry.
LOCK="${TMPDIR:-/tmp}/cdp-python-env.$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-16).lock"
exec 9>"$LOCK"
if ! flock -w 900 9; then
  echo "python-env: error: could not get lock $LOCK within 900 s" >&2
  exit 1
fi

# 1. Virtualenv.
if [[ ! -x "$PY" ]]; then
  log "creating virtualenv $VENV"
  python3 -m venv "$VENV" || {
    echo "python-env: error: 'python3 -m venv' failed (is python3-venv installed?)" >&2
    exit 1
  }
else
  log "virtualenv $VENV exists"
fi

# 2. Requirements, keyed by the hash of requirements.txt so edits re-install.
req_hash="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$req_hash" ]]; then
  log "requirements already installed ($REQUIREMENTS unchanged)"
else
  log "installing $REQUIREMENTS"
  # --disable-pip-version-check: no network round trip just to nag.
  # timeout: pip can hang forever on a stuck network; fail instead.
  if ! timeout 900 "$PY" -m pip install --quiet --disable-pip-version-check \
      -r "$REQUIREMENTS"; then
    echo "python-env: error: pip install -r $REQUIREMENTS failed" >&2
    exit 1
  fi
  echo "$req_hash" > "$STAMP"
fi

# 3. Generated code. Regenerate when any proto is newer than the marker, or when
# the requirements (and thus protoc/protobuf versions) changed since last time.
protos=("$PROTO_DIR"/grpc_testing/*.proto)
marker="$OUT_DIR/.generated"
need_gen=0
if [[ ! -f "$marker" || "$(cat "$marker")" != "$req_hash" ]]; then
  need_gen=1
else
  for p in "${protos[@]}"; do
    if [[ "$p" -nt "$marker" ]]; then need_gen=1; break; fi
  done
fi

if (( need_gen )); then
  log "generating Python code for ${protos[*]} into $OUT_DIR"
  rm -rf "$OUT_DIR"
  mkdir -p "$OUT_DIR"
  "$PY" -m grpc_tools.protoc -I "$PROTO_DIR" \
    --python_out="$OUT_DIR" --grpc_python_out="$OUT_DIR" "${protos[@]}"
  # protoc emits `from grpc_testing import ...`; the scripts put $OUT_DIR first
  # on sys.path. The __init__.py makes it a regular package, so it wins over
  # the unrelated `grpc_testing` module of PyPI's grpcio-testing should that
  # ever be installed into the venv (a namespace package would lose).
  touch "$OUT_DIR/grpc_testing/__init__.py"
  echo "$req_hash" > "$marker"
else
  log "generated code in $OUT_DIR is up to date"
fi
