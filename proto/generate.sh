#!/usr/bin/env bash
# Regenerates the Swift code for the .proto files under proto/: messages with protoc-gen-swift
# (<name>.pb.swift) and typed RPCCore stubs with protoc-gen-cdp-rpc (<name>.rpc.swift).
#
# Usage:
#   proto/generate.sh           regenerate every group, replacing its stale generated files
#   proto/generate.sh --check   generate into a temporary directory and compare with the files in the
#                               working tree; exit 1 listing the stale ones
#
# Needs protoc (Debian: protobuf-compiler and libprotobuf-dev, for the well-known types). Both plugins
# are built from this package (debug: the output does not depend on optimisation) in their own
# scratch path .build-codegen: building swift-protobuf's protoc-gen-swift product in the main .build
# would make every later `swift build` there also compile protoc's C++ sources (minutes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROTO_DIR="$ROOT/proto"
SCRATCH="$ROOT/.build-codegen"

# One line per Swift module: "<output directory, relative to the repository> <.proto files relative
# to proto/, globs allowed>". Each group is one protoc call.
CODEGEN_GROUPS=(
    "Shared/RPCServices/Generated grpc/health/v1/health.proto grpc/reflection/v1/reflection.proto grpc/reflection/v1alpha/reflection.proto"
    "Tests/Interop/InteropProto/Generated grpc_testing/*.proto"
    "Shared/CDPProto/Generated cdp/**/*.proto"
)

# Options for both plugins (protoc-gen-cdp-rpc accepts protoc-gen-swift's Visibility and FileNaming).
# PathToUnderscores flattens grpc/reflection/v1/reflection.proto to grpc_reflection_v1_reflection.pb.swift:
# a Swift module cannot have two files with the same name, which v1 and v1alpha would otherwise give.
PLUGIN_OPTIONS="Visibility=Public,FileNaming=PathToUnderscores"

check=false
case "${1:-}" in
    "") ;;
    --check) check=true ;;
    -h | --help)
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "generate.sh: unknown argument $1 (use --check or nothing)" >&2
        exit 2
        ;;
esac

command -v protoc >/dev/null || {
    echo "generate.sh: protoc not found; install protobuf-compiler and libprotobuf-dev" >&2
    exit 1
}

echo "Building protoc-gen-swift and protoc-gen-cdp-rpc (debug, scratch path .build-codegen)..." >&2
# One product per invocation: swift build honours only the last of several --product options.
for plugin in protoc-gen-swift protoc-gen-cdp-rpc; do
    (cd "$ROOT" && swift build --scratch-path "$SCRATCH" --product "$plugin" >&2)
done
BIN="$(cd "$ROOT" && swift build --scratch-path "$SCRATCH" --show-bin-path)"
for plugin in protoc-gen-swift protoc-gen-cdp-rpc; do
    [[ -x "$BIN/$plugin" ]] || {
        echo "generate.sh: $BIN/$plugin was not built" >&2
        exit 1
    }
done

shopt -s globstar nullglob

# generate <output directory> <proto files...>: runs protoc for one group.
generate() {
    local out="$1"
    shift
    mkdir -p "$out"
    (
        cd "$PROTO_DIR"
        protoc \
            --proto_path=. \
            --plugin=protoc-gen-swift="$BIN/protoc-gen-swift" \
            --swift_out="$out" \
            --swift_opt="$PLUGIN_OPTIONS" \
            --plugin=protoc-gen-cdp-rpc="$BIN/protoc-gen-cdp-rpc" \
            --cdp-rpc_out="$out" \
            --cdp-rpc_opt="$PLUGIN_OPTIONS" \
            "$@"
    )
}

# generated_files <directory>: the generated files under it, relative to it, sorted.
generated_files() {
    [[ -d "$1" ]] || return 0
    (cd "$1" && find . -type f \( -name '*.pb.swift' -o -name '*.rpc.swift' \) | sed 's|^\./||' | LC_ALL=C sort)
}

TEMP="$(mktemp -d)"
trap 'rm -rf "$TEMP"' EXIT

stale=()
for group in "${CODEGEN_GROUPS[@]}"; do
    read -r output rest <<<"$group"
    read -r -a patterns <<<"$rest"
    protos=()
    for pattern in "${patterns[@]}"; do
        matches=()
        for file in "$PROTO_DIR"/$pattern; do matches+=("${file#"$PROTO_DIR"/}"); done
        if ((${#matches[@]} == 0)); then
            echo "generate.sh: $pattern matches no file under proto/" >&2
            exit 1
        fi
        protos+=("${matches[@]}")
    done

    fresh="$TEMP/$output"
    generate "$fresh" "${protos[@]}"
    target="$ROOT/$output"

    if $check; then
        while read -r file; do
            [[ -n "$file" ]] || continue
            if [[ ! -f "$target/$file" ]] || ! cmp -s "$fresh/$file" "$target/$file"; then
                stale+=("$output/$file")
            fi
        done < <(generated_files "$fresh")
        while read -r file; do
            [[ -n "$file" ]] || continue
            [[ -f "$fresh/$file" ]] || stale+=("$output/$file (no longer generated)")
        done < <(generated_files "$target")
    else
        # Replace the group's generated files: stale ones (of removed or renamed protos) go too.
        while read -r file; do
            [[ -n "$file" ]] && rm -f "$target/$file"
        done < <(generated_files "$target")
        [[ -d "$target" ]] && find "$target" -mindepth 1 -type d -empty -delete
        mkdir -p "$target"
        cp -R "$fresh/." "$target/"
        echo "$output: $(generated_files "$target" | wc -l | tr -d ' ') files from ${#protos[@]} protos" >&2
    fi
done

if $check; then
    if ((${#stale[@]} > 0)); then
        echo "Generated code is stale:" >&2
        printf '  %s\n' "${stale[@]}" >&2
        echo "Run proto/generate.sh and commit the result." >&2
        exit 1
    fi
    echo "Generated code is up to date." >&2
fi
