#!/usr/bin/env bash
# The project's test command (README): builds everything with its tests, refuses compiler
# warnings in the project's own code, runs the Swift tests, then the interop tests in both
# directions, the socket robustness tests against the real server binary, generic
# reflection / health clients (no .proto files) against it, and the Python tests of the
# ingestion, identity, profile, segmentation and destination services' processes (crashes, restarts, the
# pipeline between them), and the end-to-end crash test on generated data.
#
# Usage: Tests/run.sh            (run from anywhere)
# Each stage prints its own summary; the script stops at the first failing stage.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

stage() { printf '\n==> %s\n' "$*"; }

stage "swift build --build-tests"
build_log="$(mktemp)"
trap 'rm -f "$build_log"' EXIT
if ! swift build --build-tests 2>&1 | tee "$build_log"; then
  echo "run: the build failed" >&2
  exit 1
fi
# Warnings are errors for our code (dependencies' warnings are not ours to fix).
if grep -E "^$(pwd)/(Shared|Services|Tests|Benchmarks)/.*: warning:" "$build_log" | sort -u | grep .; then
  echo "run: the build has warnings in project code (listed above)" >&2
  exit 1
fi

stage "swift test"
swift test --skip-build

stage "interop: Python grpcio client -> our server"
Tests/Interop/run-python-client.sh

stage "interop: our Swift client -> Python grpcio server"
Tests/Interop/run-swift-client.sh

stage "robustness: hostile peers against our server"
Tests/python-env.sh
.venv/bin/python -m pytest Tests/Robustness -q -p no:cacheprovider

stage "standard services and lifecycle: reflection and health from generic gRPC tools, SIGTERM drain"
Tests/python-env.sh
.venv/bin/python -m pytest Tests/Interop/python/test_standard_services.py Tests/Interop/python/test_lifecycle.py \
  -q -p no:cacheprovider

stage "ingestion: SIGKILL during batches and streams, cancelled uploads (Python, against cdp-ingestion)"
Tests/python-env.sh
.venv/bin/python -m pytest Tests/Ingestion -q -p no:cacheprovider

stage "identity: the Bodea pipeline through a flaky profile, SIGKILL during forwarding, bad requests (Python, against cdp-ingestion + cdp-identity)"
Tests/python-env.sh
.venv/bin/python -m pytest Tests/Identity -q -p no:cacheprovider

stage "profile: the Bodea pipeline to a flaky segmentation (state changes rebuilt into views, DeletePerson), SIGKILL of profile during forwarding, bad requests (Python, against cdp-ingestion + cdp-identity + cdp-profile)"
Tests/python-env.sh
.venv/bin/python -m pytest Tests/Profile -q -p no:cacheprovider

stage "segmentation: the Bodea segment streaming end to end, explanations, batch jobs, SIGKILL of segmentation, bad requests (Python, against cdp-ingestion + cdp-identity + cdp-profile + cdp-segmentation)"
Tests/python-env.sh
.venv/bin/python -m pytest Tests/Segmentation -q -p no:cacheprovider

stage "destination: file exports following a segment, Marketo / LinkedIn / webhook fakes (the running example, 30% faults, isolation, SIGKILL mid-delivery), bad requests (Python, against the five services)"
Tests/python-env.sh
.venv/bin/python -m pytest Tests/Destination -q -p no:cacheprovider

stage "cli: cdp up, the Bodea demo flow through the cdp CLI, cdp demo, CLI errors (Python, against the five services)"
Tests/python-env.sh
.venv/bin/python -m pytest Tests/CLI -q -p no:cacheprovider

stage "end to end: generated B2B data (Benchmarks/b2b_generator.py) through the five services, once clean and once with eight SIGKILLs and restarts; nothing lost or duplicated, clusters equal the ground truth, views and memberships equal the clean run's (Python)"
Tests/python-env.sh
.venv/bin/python -m pytest Tests/EndToEnd -q -p no:cacheprovider

stage "all test stages passed"
