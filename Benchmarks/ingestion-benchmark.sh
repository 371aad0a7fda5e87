#!/usr/bin/env bash
# Ingestion benchmark: 1M canonical records (400k persons, 100k accounts, 200k opportunities as
# CSV, 300k events as NDJSON) uploaded at once, one IngestBatch per file, to a release
# cdp-ingestion on a fresh data directory that forwards to a fake identity receiver.
# Prints upload time (first byte -> last Batch answer), records/s, MB/s, the server's peak RSS
# and CPU time, and how long the outbox then takes to drain (see Benchmarks/ingestion_benchmark.py).
#
# Usage: Benchmarks/ingestion-benchmark.sh [--no-build] [--no-save] [--records N] [--keep-data]
#          [--seed S] [--forward-batch-size N] [--log-level L] [--drain-timeout S] [--binary PATH]
#   --no-build   skip `swift build -c release --product cdp-ingestion`
#   --no-save    do not save the output to RESULTS_DIR
#   every other option goes to ingestion_benchmark.py (--help lists them)
# Env: CDP_INGESTION_BIN=.build/release/cdp-ingestion  RESULTS_DIR=Benchmarks/results (gitignored)
# Exit status: that of ingestion_benchmark.py (1: a batch failed or records went missing).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

RESULTS_DIR="${RESULTS_DIR:-Benchmarks/results}"
BUILD=1
SAVE=1
PASS=()
PY=.venv/bin/python

log() { echo "ingestion-benchmark: $*" >&2; }
die() { echo "ingestion-benchmark: error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (( $# )); do
  case "$1" in
    --no-build) BUILD=0; shift ;;
    --no-save) SAVE=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) PASS+=("$1"); shift ;;
  esac
done

if (( BUILD )); then
  log "swift build -c release --product cdp-ingestion"
  swift build -c release --product cdp-ingestion
fi
export CDP_INGESTION_BIN="${CDP_INGESTION_BIN:-.build/release/cdp-ingestion}"
[[ -x "$CDP_INGESTION_BIN" ]] || die "'$CDP_INGESTION_BIN' not found or not executable (run without --no-build, or set CDP_INGESTION_BIN)"

Tests/python-env.sh >&2

if (( SAVE )); then
  mkdir -p "$RESULTS_DIR"
  out="$RESULTS_DIR/ingestion-benchmark-$(date +%Y%m%d-%H%M%S).txt"
  {
    echo "# ingestion-benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
    echo "# $(nproc) CPUs, $(uname -sr), args: ${PASS[*]:-(defaults)}"
  } >"$out"
  set +e
  "$PY" -u Benchmarks/ingestion_benchmark.py ${PASS[@]+"${PASS[@]}"} 2>&1 | tee -a "$out"
  status="${PIPESTATUS[0]}"
  set -e
  log "saved to $out"
  exit "$status"
fi
exec "$PY" -u Benchmarks/ingestion_benchmark.py ${PASS[@]+"${PASS[@]}"}
