#!/usr/bin/env bash
# RPC benchmark: our Swift gRPC server (cdp-interop-server, release build)
# versus two grpcio servers: "python" (grpc.aio, Tests/Interop/python/interop_server.py)
# and "pysync" (grpcio's thread-pool server, Tests/Interop/python/bench_sync_server.py),
# all serving grpc.testing.TestService over plaintext HTTP/2.
#
# Usage: Benchmarks/rpc-benchmark.sh [--no-build] [--no-save]
#          [--duration S] [--warmup S] [--connections N] [--streams N]
#          [--calls N]
# Env (same knobs; flags win): DURATION=10 WARMUP=2 CONNECTIONS=4 STREAMS=32
#   H2LOAD_THREADS=1 STATUS_CALLS=200
#   CDP_BENCH_SERVER=.build/release/cdp-interop-server  (our server binary)
#   RESULTS_DIR=Benchmarks/results                      (gitignored)
#
# Steps:
#  1. swift build -c release --product cdp-interop-server   (skip: --no-build)
#  2. Tests/python-env.sh (virtualenv, grpcio, generated protobuf modules)
#  3. start the three servers on ephemeral ports
#  4. for each server and each call (EmptyCall; UnaryCall with a 1024-byte
#     payload asking for a 1024-byte response) run h2load with
#     -c CONNECTIONS -m STREAMS, WARMUP s warm-up then DURATION s measured,
#     and compute req/s, p50 and p99 latency from h2load's per-request log
#  5. h2load only sees HTTP status (gRPC errors travel as 200 + grpc-status
#     trailer), so make STATUS_CALLS real grpcio calls of each kind against
#     each server and require grpc-status OK for all of them.
# Prints a table and ours/<python server> ratios; also saves it to RESULTS_DIR unless
# --no-save. Exit 1 if a server fails to start, h2load reports failed
# requests, or any grpc-status check fails.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-4}"
STREAMS="${STREAMS:-32}"
H2LOAD_THREADS="${H2LOAD_THREADS:-1}"
STATUS_CALLS="${STATUS_CALLS:-200}"
OUR_SERVER="${CDP_BENCH_SERVER:-.build/release/cdp-interop-server}"
RESULTS_DIR="${RESULTS_DIR:-Benchmarks/results}"
BUILD=1
SAVE=1
STARTUP_TIMEOUT=20
PY=.venv/bin/python
PY_DIR=Tests/Interop/python

log() { echo "rpc-benchmark: $*" >&2; }
die() { echo "rpc-benchmark: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
# shellcheck source=Tests/Interop/lib.sh
source Tests/Interop/lib.sh

while (( $# )); do
  case "$1" in
    --no-build) BUILD=0; shift ;;
    --no-save) SAVE=0; shift ;;
    --duration) DURATION="${2:?--duration needs a value}"; shift 2 ;;
    --warmup) WARMUP="${2:?--warmup needs a value}"; shift 2 ;;
    --connections) CONNECTIONS="${2:?--connections needs a value}"; shift 2 ;;
    --streams) STREAMS="${2:?--streams needs a value}"; shift 2 ;;
    --calls) STATUS_CALLS="${2:?--calls needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
for v in DURATION WARMUP CONNECTIONS STREAMS H2LOAD_THREADS STATUS_CALLS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
(( DURATION > 0 && CONNECTIONS > 0 && STREAMS > 0 )) || die "DURATION, CONNECTIONS and STREAMS must be > 0"
command -v h2load >/dev/null || die "h2load not found (apt-get install nghttp2-client)"

# --- 1. build -----------------------------------------------------------------
if (( BUILD )); then
  log "swift build -c release --product cdp-interop-server"
  swift build -c release --product cdp-interop-server
fi
[[ -x "$OUR_SERVER" ]] || die "server binary '$OUR_SERVER' not found or not executable (run without --no-build, or set CDP_BENCH_SERVER)"

# --- 2. python environment ----------------------------------------------------
Tests/python-env.sh >&2

# Temp dir WORK_DIR; on any exit every server started is stopped (TERM, KILL
# after 5 s) and WORK_DIR removed.
servers_init cdp-bench

# start_bench_server NAME CMD...: start_server (Tests/Interop/lib.sh) with
# stdout/stderr in $WORK_DIR/NAME.out/.err; dies unless the first stdout line
# is "listening on 127.0.0.1:PORT". Sets SERVER_PID / SERVER_PORT.
start_bench_server() {
  local name="$1"; shift
  log "starting $name server: $* --port 0"
  start_server "$name" '127\.0\.0\.1' "$@"
  if [[ -z "$SERVER_PORT" ]]; then
    tail -n 20 "$WORK_DIR/$name.err" >&2
    case "$START_ERROR" in
      line) die "$name server: unexpected first stdout line '$START_DETAIL'" ;;
      exit) die "$name server exited with status $START_DETAIL before printing 'listening on ...'" ;;
      *)    die "$name server printed no 'listening on 127.0.0.1:PORT' line within ${STARTUP_TIMEOUT} s" ;;
    esac
  fi
  log "$name server pid $SERVER_PID listening on 127.0.0.1:$SERVER_PORT"
}

# --- 3. servers -------------------------------------------------------------------
start_bench_server ours "$OUR_SERVER"
OURS_PID=$SERVER_PID OURS_PORT=$SERVER_PORT
start_bench_server python "$PY" -u "$PY_DIR/interop_server.py"
PYTHON_PID=$SERVER_PID PYTHON_PORT=$SERVER_PORT
# grpcio's thread-pool server: the other common Python deployment, faster than grpc.aio for
# tiny unary calls on some machines; we compare against both.
start_bench_server pysync "$PY" -u "$PY_DIR/bench_sync_server.py"
PYSYNC_PID=$SERVER_PID PYSYNC_PORT=$SERVER_PORT

# --- request bodies: gRPC length-prefixed messages (1-byte compressed flag,
# 4-byte big-endian length, protobuf bytes) -----------------------------------
"$PY" - "$WORK_DIR" <<'EOF'
import os, struct, sys
sys.path.insert(0, os.path.join("Tests", "Interop", "python", "generated"))
from grpc_testing import empty_pb2, messages_pb2

def frame(msg):
    data = msg.SerializeToString()
    return struct.pack(">BI", 0, len(data)) + data

work = sys.argv[1]
with open(os.path.join(work, "EmptyCall.bin"), "wb") as f:
    f.write(frame(empty_pb2.Empty()))  # 5 zero bytes
unary = messages_pb2.SimpleRequest(
    response_type=messages_pb2.COMPRESSABLE, response_size=1024,
    payload=messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(1024)))
with open(os.path.join(work, "UnaryCall.bin"), "wb") as f:
    f.write(frame(unary))
EOF
[[ "$(stat -c %s "$WORK_DIR/EmptyCall.bin")" == 5 ]] || die "EmptyCall body is not 5 bytes"

# --- 4. h2load ---------------------------------------------------------------------
# Results are kept as "server call reqs rps p50 p99 non200 h2fail" lines.
RESULTS="$WORK_DIR/results.txt"
: >"$RESULTS"
H2LOAD_FAILED=0

# bench SERVER_NAME PORT CALL
bench() {
  local server="$1" port="$2" call="$3"
  local url="http://127.0.0.1:$port/grpc.testing.TestService/$call"
  local h2log="$WORK_DIR/h2load-$server-$call.log" out="$WORK_DIR/h2load-$server-$call.txt"
  log "h2load $server $call: ${WARMUP}s warm-up + ${DURATION}s, -c $CONNECTIONS -m $STREAMS"
  local rc=0
  # -D with --warm-up-time: only requests of the measured period reach the
  # stats and the --log-file (checked with h2load 1.52). The outer timeout is a
  # backstop against a server that stops answering; -N closes idle connections.
  timeout --kill-after=5 $((WARMUP + DURATION + 30)) \
    h2load -c "$CONNECTIONS" -m "$STREAMS" -t "$H2LOAD_THREADS" \
      -D "$DURATION" --warm-up-time="$WARMUP" -N 10 \
      -H 'content-type: application/grpc' -H 'te: trailers' \
      -d "$WORK_DIR/$call.bin" --log-file="$h2log" "$url" >"$out" 2>&1 || rc=$?
  if (( rc != 0 )); then
    tail -n 20 "$out" >&2
    log "h2load $server $call failed with exit status $rc"
    H2LOAD_FAILED=1
    echo "$server $call 0 0 0 0 0 1" >>"$RESULTS"
    return 0
  fi
  # h2load's own summary: "requests: T total, S started, D done, OK succeeded, F failed, E errored, X timeout"
  local summary failed_reqs
  summary="$(grep -E '^requests:' "$out" || true)"
  failed_reqs="$(sed -nE 's/.* ([0-9]+) failed, ([0-9]+) errored, ([0-9]+) timeout.*/\1 \2 \3/p' <<<"$summary" \
                 | awk '{print $1 + $2 + $3}')"
  [[ -n "$failed_reqs" ]] || { cat "$out" >&2; die "cannot parse h2load output"; }
  (( failed_reqs == 0 )) || { log "h2load $server $call: $summary"; H2LOAD_FAILED=1; }
  # Percentiles (nearest rank) from the per-request log; column 3 is the
  # time until the end of the response in microseconds, column 2 the status.
  "$PY" - "$h2log" "$DURATION" "$server" "$call" "$failed_reqs" >>"$RESULTS" <<'EOF'
import math, sys
path, duration, server, call, h2fail = sys.argv[1], float(sys.argv[2]), *sys.argv[3:]
lat, non200 = [], 0
with open(path) as f:
    for line in f:
        cols = line.split("\t")
        if len(cols) < 3:
            continue
        if cols[1] != "200":
            non200 += 1
        lat.append(int(cols[2]))
lat.sort()
def pct(p):
    return lat[max(0, math.ceil(p / 100 * len(lat)) - 1)] / 1000 if lat else 0.0
print(f"{server} {call} {len(lat)} {len(lat) / duration:.1f} {pct(50):.3f} {pct(99):.3f} {non200} {h2fail}")
EOF
}

for call in EmptyCall UnaryCall; do
  bench ours "$OURS_PORT" "$call"
  bench python "$PYTHON_PORT" "$call"
  bench pysync "$PYSYNC_PORT" "$call"
done

# Did a server die under load? That invalidates its numbers.
SERVER_DIED=0
for s in ours:$OURS_PID python:$PYTHON_PID pysync:$PYSYNC_PID; do
  if ! kill -0 "${s#*:}" 2>/dev/null; then
    log "${s%%:*} server died during the benchmark; stderr tail:"
    tail -n 20 "$WORK_DIR/${s%%:*}.err" >&2
    SERVER_DIED=1
  fi
done

# --- 5. grpc-status check with a real gRPC client ------------------------------------
STATUS="$WORK_DIR/status.txt"
status_check() {
  local server="$1" port="$2"
  log "grpc-status check: $STATUS_CALLS EmptyCall + $STATUS_CALLS UnaryCall against $server"
  timeout --kill-after=5 120 "$PY" - "$port" "$STATUS_CALLS" "$server" >>"$STATUS" <<'EOF' \
    || printf '%s\t%s\t0\t%s\t%s\n' "$server" "EmptyCall+UnaryCall" "$STATUS_CALLS" "status check itself failed or timed out" >>"$STATUS"
import os, sys
sys.path.insert(0, os.path.join("Tests", "Interop", "python", "generated"))
import grpc
from grpc_testing import empty_pb2, messages_pb2, test_pb2_grpc

port, n, server = sys.argv[1], int(sys.argv[2]), sys.argv[3]
unary = messages_pb2.SimpleRequest(
    response_type=messages_pb2.COMPRESSABLE, response_size=1024,
    payload=messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(1024)))
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    stub = test_pb2_grpc.TestServiceStub(channel)
    for call, fn, req, check in (
        ("EmptyCall", stub.EmptyCall, empty_pb2.Empty(), lambda r: True),
        ("UnaryCall", stub.UnaryCall, unary, lambda r: len(r.payload.body) == 1024),
    ):
        ok, first_error = 0, ""
        for _ in range(n):
            try:
                if check(fn(req, timeout=10)):
                    ok += 1
                elif not first_error:
                    first_error = "wrong-response-size"
            except grpc.RpcError as e:
                if not first_error:
                    first_error = f"{e.code().name}: {e.details()!r}"
        # Tab-separated: the error text may contain spaces.
        print(f"{server}\t{call}\t{ok}\t{n}\t{first_error or '-'}")
EOF
}
status_check ours "$OURS_PORT"
status_check python "$PYTHON_PORT"
status_check pysync "$PYSYNC_PORT"

# --- report ---------------------------------------------------------------------------
report() {
  echo "RPC benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ)  git $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet 2>/dev/null || echo '+dirty')"
  echo "h2load $(h2load --version | awk '{print $2}'), -c $CONNECTIONS -m $STREAMS -t $H2LOAD_THREADS, warm-up ${WARMUP}s, measured ${DURATION}s, $(nproc) CPUs; ours=$OUR_SERVER"
  echo
  awk 'BEGIN { printf "%-8s %-10s %10s %11s %9s %9s %8s\n", "server", "call", "requests", "req/s", "p50 ms", "p99 ms", "errors" }
       { printf "%-8s %-10s %10d %11.1f %9.3f %9.3f %8d\n", $1, $2, $3, $4, $5, $6, $7 + $8 }' "$RESULTS"
  echo
  # ours/<python server>: >1 req/s is better for us, <1 latency is better for us.
  # "python" is grpc.aio (interop_server.py), "pysync" grpcio's thread-pool server.
  awk '{ row[$1 " " $2] = $0; if ($1 != "ours") servers[$1] = 1 }
       END {
         n = split("EmptyCall UnaryCall", calls, " ")
         for (s in servers) for (i = 1; i <= n; i++) {
           c = calls[i]
           if (!(("ours " c) in row) || !((s " " c) in row)) continue
           split(row["ours " c], a, " "); split(row[s " " c], b, " ")
           printf "ours/%-7s %-10s req/s x%s   p50 x%s   p99 x%s\n", s, c,
             (b[4] > 0 ? sprintf("%.2f", a[4] / b[4]) : "n/a"),
             (b[5] > 0 ? sprintf("%.2f", a[5] / b[5]) : "n/a"),
             (b[6] > 0 ? sprintf("%.2f", a[6] / b[6]) : "n/a")
         }
       }' "$RESULTS" | sort
  echo
  echo "grpc-status check (grpcio client, sequential calls):"
  awk -F'\t' '{ printf "  %-8s %-10s %d/%d OK%s\n", $1, $2, $3, $4, ($5 != "-" ? "  first error: " $5 : "") }' "$STATUS"
}

REPORT="$WORK_DIR/report.txt"
report >"$REPORT"
cat "$REPORT"
if (( SAVE )); then
  mkdir -p "$RESULTS_DIR"
  saved="$RESULTS_DIR/rpc-benchmark-$(date -u +%Y%m%d-%H%M%S).txt"
  {
    cat "$REPORT"
    for f in "$WORK_DIR"/h2load-*.txt; do
      echo; echo "=== $(basename "$f")"; cat "$f"
    done
  } >"$saved"
  log "saved to $saved"
fi

# --- verdict --------------------------------------------------------------------------
fail=0
if (( H2LOAD_FAILED )); then log "FAIL: h2load reported failed/errored requests"; fail=1; fi
if (( SERVER_DIED )); then log "FAIL: a server died during the benchmark"; fail=1; fi
if awk -F'\t' '$3 != $4 { bad = 1 } END { exit !bad }' "$STATUS"; then
  log "FAIL: not every grpcio call returned grpc-status OK"; fail=1
fi
if awk '$7 != 0 { bad = 1 } END { exit !bad }' "$RESULTS"; then
  log "FAIL: some requests got a non-200 HTTP status"; fail=1
fi
if awk '$3 == 0 { bad = 1 } END { exit !bad }' "$RESULTS"; then
  log "FAIL: a benchmark run completed no requests at all"; fail=1
fi
exit "$fail"
