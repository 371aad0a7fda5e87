#!/usr/bin/env bash
# Builds the release binaries of the platform: `cdp` and the five services, with the Swift standard
# library linked statically (they then need only libc, libstdc++, libnghttp2 and libsqlite3 at run time,
# which is what the container image provides), into their own build folder, .build-static: the static
# standard library changes how every module is compiled, so sharing .build with `swift build -c release`
# (benchmarks) or the tests' debug build would recompile everything each time one of them runs.
# Without debug information (-gnone, -g0): the image strips it anyway, and it makes the build and the
# links slower and the binaries several times larger; the symbol table stays, so backtraces still name
# functions. Used by Examples/demo.sh and Examples/compose-demo.sh; the binaries land in
# .build-static/release.
#
# Usage: Examples/build-release.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for product in cdp-ingestion cdp-identity cdp-profile cdp-segmentation cdp-destination cdp; do
  echo "build-release: swift build -c release --static-swift-stdlib --scratch-path .build-static -Xswiftc -gnone -Xcc -g0 --product $product" >&2
  swift build -c release --static-swift-stdlib --scratch-path .build-static -Xswiftc -gnone -Xcc -g0 --product "$product"
done
