#!/usr/bin/env bash
# Interop: OUR Swift interop client against the grpcio reference server
# (Tests/Interop/python/interop_server.py).
#
# Usage: Tests/Interop/run-swift-client.sh [CASE...]
#        (no arguments: every case interop_client.py knows, see
#        `interop_client.py --list_test_cases`)
# Env:   CDP_INTEROP_CLIENT  client binary (default .build/debug/cdp-interop-client,
#                            relative paths are relative to the repo root)
#
# Each case runs as
#   $CDP_INTEROP_CLIENT --server-host 127.0.0.1 --server-port PORT --test-case NAME
# under `timeout 30`; exit status 0 means PASS. Prints `PASS name` /
# `FAIL name: reason` per case and `N passed, M failed` at the end; exits 1 if
# any case failed or the reference server died.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"

CLIENT_BIN="${CDP_INTEROP_CLIENT:-.build/debug/cdp-interop-client}"
CASE_TIMEOUT=30      # seconds per client invocation
STARTUP_TIMEOUT=20   # seconds to wait for the server's "listening on" line
PY=.venv/bin/python
PY_DIR=Tests/Interop/python

log() { echo "run-swift-client: $*"; }
die() { echo "run-swift-client: error: $*" >&2; exit 1; }
# shellcheck source=Tests/Interop/lib.sh
source Tests/Interop/lib.sh

Tests/python-env.sh

[[ -x "$CLIENT_BIN" ]] || die "client binary '$CLIENT_BIN' not found or not executable (build it, or set CDP_INTEROP_CLIENT)"

# One source of truth for the case names: the Python client's list (the same
# cases run-python-client.sh runs against our server).
if (( $# > 0 )); then
  CASES=("$@")
else
  mapfile -t CASES < <("$PY" "$PY_DIR/interop_client.py" --list_test_cases)
  (( ${#CASES[@]} > 0 )) || die "could not get the case list from interop_client.py"
fi

# Temp dir WORK_DIR; on any exit the server is stopped (TERM, KILL after 5 s)
# and WORK_DIR removed.
servers_init cdp-interop

log "starting $PY_DIR/interop_server.py --port 0"
# -u: unbuffered, belt and braces on top of the server's own flush.
start_server server '127\.0\.0\.1' "$PY" -u "$PY_DIR/interop_server.py"
if [[ -z "$SERVER_PORT" ]]; then
  show_server_logs server "reference server"
  case "$START_ERROR" in
    line) die "unexpected first stdout line from reference server: '$START_DETAIL'" ;;
    exit) die "reference server exited with status $START_DETAIL before printing 'listening on ...'" ;;
    *)    die "reference server did not start within ${STARTUP_TIMEOUT} s" ;;
  esac
fi
log "reference server pid $SERVER_PID listening on 127.0.0.1:$SERVER_PORT"

passed=0
failed=0
server_died=0
for name in "${CASES[@]}"; do
  if (( server_died )); then
    failed=$((failed + 1))
    echo "FAIL $name: not run (reference server died)"
    continue
  fi
  out="$WORK_DIR/client-$name.log"
  rc=0
  # --kill-after: a client ignoring SIGTERM still goes away.
  timeout --kill-after=5 "$CASE_TIMEOUT" "$CLIENT_BIN" \
    --server-host 127.0.0.1 --server-port "$SERVER_PORT" --test-case "$name" \
    >"$out" 2>&1 </dev/null || rc=$?
  if (( rc == 0 )); then
    passed=$((passed + 1))
    echo "PASS $name"
  else
    failed=$((failed + 1))
    case $rc in
      124|137) reason="timed out after ${CASE_TIMEOUT} s" ;;
      *)       reason="exit status $rc" ;;
    esac
    echo "FAIL $name: $reason"
    # The client's own explanation, indented so the summary stays greppable.
    tail -n 15 "$out" | sed 's/^/    /'
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    server_died=1
    echo "run-swift-client: error: reference server died during case $name" >&2
    show_server_logs server "reference server"
  fi
done

echo "$passed passed, $failed failed"
if (( failed > 0 || server_died )); then
  exit 1
fi
