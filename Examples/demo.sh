#!/usr/bin/env bash
# Ingestion demo: starts a release cdp-ingestion on a temp data directory (no identity service, so
# records wait in its outbox), creates the sources of the Bodea story, uploads every fixture file of
# Tests/IngestionTests/Fixtures, re-sends two of them, streams two page views and prints the batches
# and the outbox (see Examples/ingestion_demo.py).
#
# Usage: Examples/ingestion-demo.sh [--no-build] [--keep-data] [--binary PATH]
#   --no-build   skip `swift build -c release --product cdp-ingestion`
#   --keep-data  keep the temp dir (data dir and service logs)
#   --binary     the cdp-ingestion to run
# Env: CDP_INGESTION_BIN=.build/release/cdp-ingestion
# Exit status: that of ingestion_demo.py (1: something unexpected happened, 2: no service).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

BUILD=1
PASS=()
while (( $# )); do
  case "$1" in
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) PASS+=("$1"); shift ;;
  esac
done

if (( BUILD )); then
  echo "ingestion-demo: swift build -c release --product cdp-ingestion" >&2
  swift build -c release --product cdp-ingestion
fi
export CDP_INGESTION_BIN="${CDP_INGESTION_BIN:-.build/release/cdp-ingestion}"

Tests/python-env.sh >&2

exec .venv/bin/python -u Examples/ingestion_demo.py ${PASS[@]+"${PASS[@]}"}
