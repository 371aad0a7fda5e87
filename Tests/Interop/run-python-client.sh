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
# shellcheck source=Tests/Interop/lib.sh
source Tests/Interop/lib.sh

Tests/python-env.sh

[[ -x "$SERVER_BIN" ]] || die "server binary '$SERVER_BIN' not found or not executable (build it, or set CDP_INTEROP_SERVER)"

# Temp dir WORK_DIR; on any exit the server is stopped (TERM, KILL after 5 s)
# and WORK_DIR removed.
servers_init cdp-interop

log "starting $SERVER_BIN --port 0"
start_server server '[^[:space:]]+' "$SERVER_BIN"
if [[ -z "$SERVER_PORT" ]]; then
  show_server_logs server server
  case "$START_ERROR" in
    line) die "unexpected first stdout line from server: '$START_DETAIL' (expected 'listening on 127.0.0.1:PORT')" ;;
    exit) die "server exited with status $START_DETAIL before printing 'listening on HOST:PORT'" ;;
    *)    die "server printed no 'listening on HOST:PORT' line within ${STARTUP_TIMEOUT} s (is stdout flushed?)" ;;
  esac
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
  show_server_logs server server
  die "server process died during the run (exit status $rc)"
fi

if (( client_status != 0 )); then
  show_server_logs server server
  log "FAILED (client exit status $client_status)"
  exit "$client_status"
fi
log "all cases passed"
