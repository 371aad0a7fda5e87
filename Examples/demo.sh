#!/usr/bin/env bash
# Pipeline demo: builds the release cdp-ingestion, cdp-identity, cdp-profile, cdp-segmentation and
# cdp-destination, starts cdp-destination, cdp-segmentation sending its membership changes to it
# (--profile for Evaluate, Estimate and Explain), cdp-profile forwarding to segmentation (--identity for
# DeletePerson), cdp-identity forwarding to profile and cdp-ingestion forwarding to identity, each on its
# own data directory in a temp dir; creates the Bodea segment (DESIGN.md §5, streaming, and a batch copy)
# and the sources of the Bodea story, uploads every fixture file of Tests/IngestionTests/Fixtures,
# re-sends two of them, streams two page views, waits until identity has taken every record, and prints
# identity's view: p2@townsend.com one person across Salesforce and both Marketo instances, the Townsend
# account of Marketo 1 and Marketo 2 one account through the MDM crosswalk, p1 and p3 persons of their
# own, the conflicts and identity's outbox (drained into profile). Then profile's view: the Townsend
# account view (its fragments, Opportunity 1 and 2, its persons, won $1,100,000), p2's person view
# (fragments, accounts, opportunities, events) and profile's outbox (drained into segmentation). Then
# segmentation's view: the streaming segment's members (empty unless p2's last page view of the new
# product page, April 2026, is within a month of today), a batch Evaluate of the batch copy as of
# 2026-05-01 (p2 realized), its members (exactly p2@townsend.com), the explanation of p2's membership,
# the estimates with a $2M threshold (nobody) and $1M (p2), and segmentation's outbox (drained into
# destination). Then destination: the audience activated to two file exports, a Marketo static list's
# import file (p2@townsend.com with first name, last name and title) and a LinkedIn upload file (the
# SHA-256 of p2@townsend.com), and the delivery log. Checks all of it, then stops the services with
# SIGTERM (see Examples/demo.py).
# cdp-identity runs with its default rules (only an MDM master id is unique per person or account):
# Bodea has a CRM per line of business, so p2 has a CRM id in each, and `--unique-namespace
# person:crmId` would keep p2's records apart.
#
# Usage: Examples/demo.sh [--no-build] [--keep-data] [--ingestion-binary PATH] [--identity-binary PATH]
#                         [--profile-binary PATH] [--segmentation-binary PATH] [--destination-binary PATH]
#   --no-build              skip `swift build -c release --product cdp-ingestion` (and cdp-identity,
#                           cdp-profile, cdp-segmentation, cdp-destination)
#   --keep-data             keep the temp dir (data dirs, exports and service logs)
#   --ingestion-binary      the cdp-ingestion to run
#   --identity-binary       the cdp-identity to run
#   --profile-binary        the cdp-profile to run
#   --segmentation-binary   the cdp-segmentation to run
#   --destination-binary    the cdp-destination to run
# Env: CDP_INGESTION_BIN=.build/release/cdp-ingestion, CDP_IDENTITY_BIN=.build/release/cdp-identity,
#      CDP_PROFILE_BIN=.build/release/cdp-profile, CDP_SEGMENTATION_BIN=.build/release/cdp-segmentation,
#      CDP_DESTINATION_BIN=.build/release/cdp-destination
# Exit status: that of demo.py (1: something unexpected happened, 2: a service did not start).
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
  for product in cdp-ingestion cdp-identity cdp-profile cdp-segmentation cdp-destination; do
    echo "demo: swift build -c release --product $product" >&2
    swift build -c release --product "$product"
  done
fi
export CDP_INGESTION_BIN="${CDP_INGESTION_BIN:-.build/release/cdp-ingestion}"
export CDP_IDENTITY_BIN="${CDP_IDENTITY_BIN:-.build/release/cdp-identity}"
export CDP_PROFILE_BIN="${CDP_PROFILE_BIN:-.build/release/cdp-profile}"
export CDP_SEGMENTATION_BIN="${CDP_SEGMENTATION_BIN:-.build/release/cdp-segmentation}"
export CDP_DESTINATION_BIN="${CDP_DESTINATION_BIN:-.build/release/cdp-destination}"

Tests/python-env.sh >&2

exec .venv/bin/python -u Examples/demo.py ${PASS[@]+"${PASS[@]}"}
