#!/usr/bin/env bash
# Interop: grpcio client (Tests/Interop/python/interop_client.py) against OUR
# Swift interop server.
#
# Usage: Tests/Interop/run-python-client.sh
# Env:   CDP_INTEROP_SERVER  server binary (default .build/debug/cdp-interop-server,
#                            relative paths are relative to the repo root)
#
# Starts "$CDP_INTEROP_SERVER --port 0", reads the first stdout line
# "listening on HOST:PORT", runs every interop case, stops the server.
# Exit status: the client's (1 if any case failed), or 1 if the server could
# not be started or died during the run (a crash is a failure even when the
# client happened to pass).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"

SERVER_BIN="${CDP_INTEROP_SERVER:-.build/debug/cdp-interop-server}"
STARTUP_TIMEOUT=20   # seconds to wait for the "listening on" line
# The client bounds each case to ~35 s; this only guards against the
# unexpected (16 cases, most finish in milliseconds).
CLIENT_TIMEOUT=600

log() { echo "run-python-client: $*"; }
die() { echo "run-python-client: error: $*" >&2; exit 1; }

Tests/python-env.sh

[[ -x "$SERVER_BIN" ]] || die "server binary '$SERVER_BIN' not found or not executable (build it, or set CDP_INTEROP_SERVER)"

WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/cdp-interop.XXXXXX")"
SERVER_PID=""

# Stop the server and remove temp files, whatever way the script exits. The
# server runs in its own process group (setsid below), so signalling the group
# also reaches helper processes of a wrapper script. TERM first, KILL after 5 s.
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
    # Also reaps leftovers of the group whose leader already exited.
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
  echo "--- server stdout (last 20 lines) ---" >&2
  tail -n 20 "$WORK_DIR/server.out" >&2 || true
  echo "--- server stderr (last 40 lines) ---" >&2
  tail -n 40 "$WORK_DIR/server.err" >&2 || true
  echo "---" >&2
}

log "starting $SERVER_BIN --port 0"
# Output goes to files (not a pipe) so the server never blocks or gets SIGPIPE
# on stdout after we have read the first line. setsid makes it the leader of a
# new process group (its pid is the group id) for cleanup().
: >"$WORK_DIR/server.out"  # exists before the poll loop reads it
setsid "$SERVER_BIN" --port 0 >"$WORK_DIR/server.out" 2>"$WORK_DIR/server.err" &
SERVER_PID=$!

# Wait for the first complete stdout line: "listening on HOST:PORT".
SERVER_HOST="" SERVER_PORT=""
deadline=$((SECONDS + STARTUP_TIMEOUT))
while (( SECONDS < deadline )); do
  if [[ "$(wc -l <"$WORK_DIR/server.out")" -ge 1 ]]; then
    first_line="$(head -n 1 "$WORK_DIR/server.out")"
    if [[ "$first_line" =~ ^listening\ on\ ([^[:space:]]+):([0-9]+)$ ]]; then
      SERVER_HOST="${BASH_REMATCH[1]}"
      SERVER_PORT="${BASH_REMATCH[2]}"
      break
    fi
    show_server_logs
    die "unexpected first stdout line from server: '$first_line' (expected 'listening on 127.0.0.1:PORT')"
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    wait "$SERVER_PID" && rc=0 || rc=$?
    show_server_logs
    die "server exited with status $rc before printing 'listening on HOST:PORT'"
  fi
  sleep 0.1
done
if [[ -z "$SERVER_PORT" ]]; then
  show_server_logs
  die "server printed no 'listening on HOST:PORT' line within ${STARTUP_TIMEOUT} s (is stdout flushed?)"
fi
log "server pid $SERVER_PID listening on $SERVER_HOST:$SERVER_PORT"

client_status=0
timeout --kill-after=10 "$CLIENT_TIMEOUT" \
  .venv/bin/python Tests/Interop/python/interop_client.py \
    --server_host "$SERVER_HOST" --server_port "$SERVER_PORT" --test_case all \
  || client_status=$?
if (( client_status == 124 )); then
  log "client timed out after ${CLIENT_TIMEOUT} s"
fi

# A server that crashed (or exited) during the run fails the run.
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  wait "$SERVER_PID" && rc=0 || rc=$?
  show_server_logs
  die "server process died during the run (exit status $rc)"
fi

if (( client_status != 0 )); then
  show_server_logs
  log "FAILED (client exit status $client_status)"
  exit "$client_status"
fi
log "all cases passed"
