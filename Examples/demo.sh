#!/usr/bin/env bash
# The main job: builds the release `cdp` client and the five services (cdp-ingestion, cdp-identity,
# cdp-profile, cdp-segmentation, cdp-destination; static Swift standard library, as the container image
# uses them), then runs `cdp demo`: the Bodea story of ARCHITECTURE.md §1 on the files of Examples/bodea/ on a
# fresh data directory — the five services started as processes, two Marketo instances and an MDM
# crosswalk ingested, identities resolved and profiles unified, the Bodea segment evaluated as of the
# story's "now" (2026-05-01), the audience (exactly p2@townsend.com) explained and activated to a
# Marketo static list's import file and a LinkedIn Matched Audience's upload file, the services
# stopped. Exit status 1 if anything differs from the story.
#
# Usage: Examples/demo.sh [--no-build] [cdp demo options…]
#   --no-build   use the binaries already in .build-static/release
#   other options go to `cdp demo` (see `.build-static/release/cdp demo --help`), e.g. --data-dir DIR, --out DIR
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
  Examples/build-release.sh
fi
exec .build-static/release/cdp demo --bin-dir .build-static/release --examples Examples/bodea ${PASS[@]+"${PASS[@]}"}
