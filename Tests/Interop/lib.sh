# shellcheck shell=bash
# Shared by Tests/Interop/run-python-client.sh, Tests/Interop/run-swift-client.sh
# and Benchmarks/rpc-benchmark.sh (source it; it sets no shell options):
# a temp work directory, servers started in the background on an ephemeral
# port, and their cleanup on every exit.
#
# The sourcing script defines log() (used for the SIGKILL notice) and
# STARTUP_TIMEOUT (seconds to wait for a server's "listening on" line).

# servers_init PREFIX: create WORK_DIR ($TMPDIR/PREFIX.XXXXXX) and install the
# traps: cleanup_servers on EXIT, exit status 130 on INT and 143 on TERM.
servers_init() {
  WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
  SERVER_PIDS=()
  trap cleanup_servers EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# Stop every server start_server started and remove WORK_DIR, keeping the
# script's exit status. Each server runs in its own process group (setsid; its
# pid is the group id), so signalling the group also reaches helper processes
# of a wrapper script. TERM first, KILL after 5 s.
cleanup_servers() {
  local status=$? pid
  for pid in "${SERVER_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || true
    fi
  done
  for pid in "${SERVER_PIDS[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "server did not exit within 5 s of SIGTERM; sending SIGKILL"
    fi
    # Also reaps leftovers of a group whose leader already exited.
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK_DIR"
  exit "$status"
}

# start_server NAME HOST_RE CMD...: run `CMD... --port 0` in the background as
# the leader of a new process group, stdout/stderr to $WORK_DIR/NAME.out and
# NAME.err (files, not pipes, so the server never blocks or gets SIGPIPE after
# we have read the first line), and wait up to STARTUP_TIMEOUT s for its first
# complete stdout line "listening on HOST:PORT", HOST matching the extended
# regex HOST_RE. Sets SERVER_PID (also appended to SERVER_PIDS), SERVER_HOST
# and SERVER_PORT. SERVER_PORT stays empty when the server did not start;
# START_ERROR then says why:
#   line     the first line was something else (it is in START_DETAIL)
#   exit     the server exited first (its exit status is in START_DETAIL)
#   timeout  no complete first line within STARTUP_TIMEOUT s
# Never fails itself: the caller reports START_ERROR in its own words.
start_server() {
  local name="$1" host_re="$2"; shift 2
  local out="$WORK_DIR/$name.out" err="$WORK_DIR/$name.err"
  local re="^listening on (${host_re}):([0-9]+)\$" deadline
  : >"$out"; : >"$err"  # exist before the poll loop reads them
  setsid "$@" --port 0 >"$out" 2>"$err" </dev/null &
  SERVER_PID=$!
  SERVER_PIDS+=("$SERVER_PID")
  SERVER_HOST="" SERVER_PORT="" START_ERROR="timeout" START_DETAIL=""
  deadline=$((SECONDS + STARTUP_TIMEOUT))
  while (( SECONDS < deadline )); do
    if [[ "$(wc -l <"$out")" -ge 1 ]]; then
      START_DETAIL="$(head -n 1 "$out")"
      if [[ "$START_DETAIL" =~ $re ]]; then
        SERVER_HOST="${BASH_REMATCH[1]}"
        SERVER_PORT="${BASH_REMATCH[2]}"
        START_ERROR="" START_DETAIL=""
      else
        START_ERROR="line"
      fi
      return 0
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      wait "$SERVER_PID" && START_DETAIL=0 || START_DETAIL=$?
      START_ERROR="exit"
      return 0
    fi
    sleep 0.1
  done
}

# show_server_logs NAME LABEL: the tails of $WORK_DIR/NAME.out and NAME.err,
# headed "LABEL stdout" / "LABEL stderr", on stderr.
show_server_logs() {
  echo "--- $2 stdout (last 20 lines) ---" >&2
  tail -n 20 "$WORK_DIR/$1.out" >&2 || true
  echo "--- $2 stderr (last 40 lines) ---" >&2
  tail -n 40 "$WORK_DIR/$1.err" >&2 || true
  echo "---" >&2
}
