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

WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/cdp-interop.XXXXXX")"
SERVER_PID=""

# Stop the server and remove temp files on any exit. The server is started
# with setsid, so its pid is also its process-group id; TERM the group, KILL
# after 5 s.
cleanup() {
  local status=$?
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      log "server did not exit within 5 s of SIGTERM; sending SIGKILL"
    fi
  fi
  if [[ -n "$SERVER_PID" ]]; then
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK_DIR"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show_server_logs() {
  echo "--- reference server stdout (last 20 lines) ---" >&2
  tail -n 20 "$WORK_DIR/server.out" >&2 || true
  echo "--- reference server stderr (last 40 lines) ---" >&2
  tail -n 40 "$WORK_DIR/server.err" >&2 || true
  echo "---" >&2
}

log "starting $PY_DIR/interop_server.py --port 0"
: >"$WORK_DIR/server.out"  # exists before the poll loop reads it
# -u: unbuffered, belt and braces on top of the server's own flush.
setsid "$PY" -u "$PY_DIR/interop_server.py" --port 0 \
  >"$WORK_DIR/server.out" 2>"$WORK_DIR/server.err" &
SERVER_PID=$!

# Wait for the first complete stdout line: "listening on HOST:PORT".
SERVER_PORT=""
deadline=$((SECONDS + STARTUP_TIMEOUT))
while (( SECONDS < deadline )); do
  if [[ "$(wc -l <"$WORK_DIR/server.out")" -ge 1 ]]; then
    first_line="$(head -n 1 "$WORK_DIR/server.out")"
    if [[ "$first_line" =~ ^listening\ on\ 127\.0\.0\.1:([0-9]+)$ ]]; then
      SERVER_PORT="${BASH_REMATCH[1]}"
      break
    fi
    show_server_logs
    die "unexpected first stdout line from reference server: '$first_line'"
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    wait "$SERVER_PID" && rc=0 || rc=$?
    show_server_logs
    die "reference server exited with status $rc before printing 'listening on ...'"
  fi
  sleep 0.1
done
[[ -n "$SERVER_PORT" ]] || { show_server_logs; die "reference server did not start within ${STARTUP_TIMEOUT} s"; }
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
    show_server_logs
  fi
done

echo "$passed passed, $failed failed"
if (( failed > 0 || server_died )); then
  exit 1
fi
