#!/usr/bin/env bash
# Container demo: runs the five services in containers with compose.yaml and the Bodea story against them.
#   a. builds the release binaries with the Swift standard library linked in (Examples/build-release.sh:
#      swift build -c release --static-swift-stdlib --scratch-path .build-static --product cdp-ingestion,
#      cdp-identity, cdp-profile, cdp-segmentation, cdp-destination, cdp; into .build-static/release), so that they run on plain Debian 12;
#   b. makes the base image docker.io/library/debian:bookworm-slim if podman has none: debootstrap
#      --variant=minbase bookworm, trimmed like the official slim image, imported with `podman import`;
#      the root filesystem tarball is kept in .build/containers/ so that the next run only imports it;
#   c. builds the image (Dockerfile) from a small context staged in .build/containers/context;
#   d. validates compose.yaml with `docker-compose -f compose.yaml config -q` (Debian's 1.29);
#   e. starts the five services with podman-compose (project "cdp"; ports 7400..7404 on the host; the
#      destination's file exports in .build/containers/exports, mounted at /exports) and waits until
#      every container's health check (`cdp health`) passes;
#   f. from the host: `cdp status`, then `cdp demo --attach --out /exports --exports-here DIR` (the Bodea
#      story of Examples/bodea against the containers; /exports as the destination container sees it, DIR
#      the bind-mounted directory on the host), then checks
#      on the host that the Marketo export holds exactly p2@townsend.com (Paul, Okafor, "Director,
#      Procurement") and the LinkedIn export exactly sha256("p2@townsend.com");
#   g. tears everything down (`podman-compose down -v`: containers, volumes; and the network), also on
#      failure, unless --keep.
# Prints how long each step took. Needs root, podman, podman-compose, docker-compose and debootstrap:
# `.ci/setup-containers` installs them on Debian 12.
#
# Usage: Examples/compose-demo.sh [--no-build] [--keep] [--no-demo]
#   --no-build   use the binaries already in .build-static/release (skip step a; CI builds them before)
#   --keep       leave the containers running at the end (and after a failure); stop them with
#                `podman-compose -p cdp -f compose.yaml down -v -t 15`
#   --no-demo    stop after step e (image and containers only; skip f)
# Env: CDP_IMAGE=localhost/cdp:dev (the image built and run), CDP_CLI_BIN=.build-static/release/cdp (the `cdp`
#      copied into the image and run on the host), CDP_EXPORTS_DIR=.build/containers/exports,
#      CDP_DEBIAN_MIRROR (for debootstrap; default: the first Debian archive this machine's apt sources
#      name), CDP_HEALTH_TIMEOUT=120 (seconds).
# Exit status: 0 when every step passed, 1 otherwise (the failing step is named on stderr).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

BUILD=1
KEEP=0
DEMO=1
while (( $# )); do
  case "$1" in
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    --no-demo) DEMO=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compose-demo: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

PROJECT=cdp
SERVICES=(ingestion identity profile segmentation destination)
PORTS=(7400 7401 7402 7403 7404)
PRODUCTS=(cdp-ingestion cdp-identity cdp-profile cdp-segmentation cdp-destination cdp)
BASE_IMAGE=docker.io/library/debian:bookworm-slim
WORK="$REPO_ROOT/.build/containers"
ROOTFS_TAR="$WORK/debian-bookworm-slim-rootfs.tar"
export CDP_IMAGE="${CDP_IMAGE:-localhost/cdp:dev}"
export CDP_EXPORTS_DIR="${CDP_EXPORTS_DIR:-$WORK/exports}"
CDP_CLI_BIN="${CDP_CLI_BIN:-.build-static/release/cdp}"
# The Debian archive this machine's apt uses (deb822 `URIs:` or one-line `deb URI suite`), so that the base
# image is made from the same mirror.
host_mirror() {
  local files=() file
  for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$file" ]] && files+=("$file")
  done
  (( ${#files[@]} )) || return 0
  sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
    -e 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\).*/\2/p' \
    "${files[@]}" | { grep -v -- '-security' || true; } | head -n 1
}
MIRROR="${CDP_DEBIAN_MIRROR:-$(host_mirror)}"
HEALTH_TIMEOUT="${CDP_HEALTH_TIMEOUT:-120}"
IMAGE_UID=10001   # the Dockerfile's user

# podman-compose 1.0.3 ignores stop_grace_period (its down/stop take -t, default 10 s) and
# COMPOSE_PROJECT_NAME: pass both. --stop-timeout also covers a plain `podman stop`.
COMPOSE=(podman-compose -p "$PROJECT" -f compose.yaml --podman-run-args=--stop-timeout=15)
STOP_TIMEOUT=15

STEP=""
STEP_START=0
TIMINGS=()
log() { echo "compose-demo: $*" >&2; }
fail() { log "FAILED in step '$STEP': $*"; exit 1; }
begin() { STEP="$1"; STEP_START=$SECONDS; log "== $1"; }
end() { TIMINGS+=("$(printf '%-22s %4d s' "$STEP" $((SECONDS - STEP_START)))"); }
print_timings() {
  (( ${#TIMINGS[@]} )) || return 0
  log "timings:"
  for line in "${TIMINGS[@]}"; do echo "  $line" >&2; done
  printf '  %-22s %4d s\n' total "$SECONDS" >&2
}

containers_exist() {
  podman ps -a --format '{{.Names}}' --filter "label=io.podman.compose.project=$PROJECT" | grep -q .
}
teardown() {
  # podman-compose 1.0.3's down stops the containers one after the other (about 1.5 s each), so stop them
  # all at once first (SIGTERM, SIGKILL after STOP_TIMEOUT); down then removes the containers and (-v)
  # the project's volumes, but not its network.
  local names
  mapfile -t names < <(podman ps -q --filter "label=io.podman.compose.project=$PROJECT")
  (( ${#names[@]} == 0 )) || podman stop -t "$STOP_TIMEOUT" "${names[@]}" >/dev/null 2>&1 || true
  "${COMPOSE[@]}" down -v -t "$STOP_TIMEOUT" >/dev/null 2>&1 || true
  podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
}
on_exit() {
  local status=$?
  trap - EXIT
  if (( status != 0 )) && [[ -n "$STEP" ]] && (( KEEP == 0 )) && containers_exist; then
    log "containers at the failure:"
    podman ps -a --filter "label=io.podman.compose.project=$PROJECT" \
      --format '  {{.Names}} {{.Status}}' >&2 || true
  fi
  if (( KEEP )); then
    containers_exist && log "--keep: containers left running; remove them (and their volumes) with:" \
      "${COMPOSE[*]} down -v -t $STOP_TIMEOUT; podman network rm ${PROJECT}_default"
  elif containers_exist || podman network exists "${PROJECT}_default" 2>/dev/null; then
    STEP=down
    STEP_START=$SECONDS
    log "== down"
    teardown
    end
  fi
  print_timings
  if (( status == 0 )); then log "all steps passed"; fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (run .ci/setup-containers as root)"
  done
}
require podman podman-compose docker-compose
(( EUID == 0 )) || fail "run as root (rootful podman; debootstrap)"

mkdir -p "$WORK"

# a. the release binaries, with the Swift standard library linked in
if (( BUILD )); then
  begin build
  Examples/build-release.sh || fail "Examples/build-release.sh"
  end
fi
# b. the base image
if podman image exists "$BASE_IMAGE"; then
  log "base image $BASE_IMAGE present"
else
  if [[ ! -s "$ROOTFS_TAR" ]]; then
    begin debootstrap
    require debootstrap
    rootfs="$WORK/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
      || { tail -n 20 "$WORK/debootstrap.log" >&2; fail "debootstrap (log: $WORK/debootstrap.log)"; }
    # What the official slim image does: no docs, man pages or translations (also for later installs),
    # apt's sources for bookworm, its updates and security updates, no package lists or cached .debs.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    # apt's sources: this machine's own Debian sources (bookworm, its updates and security updates).
    rm -f "$rootfs/etc/apt/sources.list"
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
      cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/debian.sources"
    else
      grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null >"$rootfs/etc/apt/sources.list" || true
    fi
    find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{man,info,groff,lintian,linda}/* "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
      "$rootfs"/var/log/apt/* "$rootfs"/tmp/*
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    tar -C "$rootfs" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$rootfs"
    end
  fi
  begin import
  podman import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null || fail "podman import of $ROOTFS_TAR"
  end
fi

# c. the image, from a small staged context: the binaries without their debug info (strip --strip-debug
#    keeps the symbols that crash backtraces name: about 110 MB a service instead of 170 MB), the example.
begin image
binaries=()
for product in "${PRODUCTS[@]}"; do
  binary=".build-static/release/$product"
  [[ "$product" == cdp ]] && binary="$CDP_CLI_BIN"
  [[ -x "$binary" ]] || fail "$binary is missing: build it (without --no-build this script does)"
  if ldd "$binary" 2>/dev/null | grep -q 'libswift'; then
    fail "$binary links the Swift runtime dynamically: build it with --static-swift-stdlib"
  fi
  binaries+=("$binary")
done
context="$WORK/context"
rm -rf "$context"
mkdir -p "$context/.build-static/release" "$context/Examples"
for binary in "${binaries[@]}"; do
  staged="$context/.build-static/release/$(basename "$binary")"
  strip --strip-debug -o "$staged" "$binary" 2>/dev/null || cp "$binary" "$staged"
done
cp -r Examples/bodea "$context/Examples/bodea"
previous="$(podman image inspect --format '{{.Id}}' "$CDP_IMAGE" 2>/dev/null || true)"
podman build --quiet -f Dockerfile -t "$CDP_IMAGE" "$context" >/dev/null || fail "podman build"
rm -rf "$context"
# The image this one replaces (500+ MB) would stay behind untagged at every rebuild.
if [[ -n "$previous" && "$previous" != "$(podman image inspect --format '{{.Id}}' "$CDP_IMAGE")" ]]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
end

# d. compose.yaml within what docker-compose 1.29 accepts
begin validate
docker-compose -f compose.yaml config -q || fail "docker-compose -f compose.yaml config -q"
end

# e. the containers, up and healthy
begin up
containers_exist && { log "removing the containers of an earlier run"; teardown; }
for port in "${PORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port $port is already taken on this host (another cdp running?)"
  fi
done
# The destination writes as uid 10001; the host reads the files there (root).
rm -rf "$CDP_EXPORTS_DIR"
install -d -o "$IMAGE_UID" -g "$IMAGE_UID" -m 0755 "$CDP_EXPORTS_DIR"
# podman-compose 1.0.3 ignores profiles: name the five services so that the segmentation-1 replica
# (profile "replicas") stays down. It also reports no failure of `podman run`: check the states below.
"${COMPOSE[@]}" up -d "${SERVICES[@]}" >"$WORK/compose-up.log" 2>&1 \
  || { cat "$WORK/compose-up.log" >&2; fail "podman-compose up"; }
# podman runs healthchecks from systemd timers; without systemd (CI) nobody does, so run them here
# (`podman healthcheck run` runs the container's own check, `cdp health`, and records the result).
# A service that exits is restarted at once (restart: unless-stopped; podman 4.3 has no back-off):
# any restart here means it cannot start, so fail with its log rather than wait.
show_logs() { log "--- podman logs $1 (last 40 lines)"; podman logs --tail 40 "$1" 2>&1 | sed 's/^/  /' >&2 || true; }
healthy=()
deadline=$((SECONDS + HEALTH_TIMEOUT))
while :; do
  pending=()
  for service in "${SERVICES[@]}"; do
    [[ " ${healthy[*]} " == *" $service "* ]] && continue
    name="${PROJECT}_${service}_1"
    read -r state restarts < <(podman inspect --format '{{.State.Status}} {{.RestartCount}}' "$name" 2>/dev/null \
      || echo missing 0)
    if [[ "$state" == missing ]]; then
      # what `podman run` said, from podman-compose's output
      sed -n "/^podman run --name=$name /,/^exit code/p" "$WORK/compose-up.log" | tail -n +2 | grep -v '^exit code' >&2
      fail "container $name was not created (podman-compose's output: $WORK/compose-up.log)"
    fi
    if [[ "$state" != running ]] || (( restarts > 0 )); then
      show_logs "$name"
      fail "container $name is $state and was restarted $restarts times: its service does not start (log above)"
    fi
    if podman healthcheck run "$name" >/dev/null 2>&1; then
      healthy+=("$service")
      log "$name healthy after $((SECONDS - STEP_START)) s"
    else
      pending+=("$service")
    fi
  done
  (( ${#pending[@]} == 0 )) && break
  if (( SECONDS >= deadline )); then
    for service in "${SERVICES[@]}"; do show_logs "${PROJECT}_${service}_1"; done
    fail "not healthy after $HEALTH_TIMEOUT s: ${pending[*]}"
  fi
  sleep 1
done
end

# f. the Bodea story against the containers, from the host
if (( DEMO )); then
  begin demo
  # The published ports, whatever this shell's CDP_* variables say (CDP_TOKEN is the containers' too).
  cdp() {
    env -u CDP_INGESTION_ADDR -u CDP_IDENTITY_ADDR -u CDP_PROFILE_ADDR -u CDP_SEGMENTATION_ADDR \
      -u CDP_DESTINATION_ADDR CDP_HOST=127.0.0.1 CDP_PORT_BASE=7400 "$CDP_CLI_BIN" "$@"
  }
  cdp status || fail "cdp status"
  cdp demo --attach --out /exports --exports-here "$CDP_EXPORTS_DIR" --examples Examples/bodea \
    || fail "cdp demo --attach"

  check_export() {  # check_export NAME DIR EXPECTED
    local name="$1" dir="$2" expected="$3" files
    mapfile -t files < <(find "$dir" -maxdepth 1 -type f -name '*.csv' 2>/dev/null | sort)
    (( ${#files[@]} == 1 )) || {
      log "files in $CDP_EXPORTS_DIR:"; find "$CDP_EXPORTS_DIR" -type f >&2
      fail "expected one $name export file (*.csv) in $dir, found ${#files[@]}"
    }
    local actual
    actual="$(tr -d '\r' <"${files[0]}")"
    if [[ "$actual" != "$expected" ]]; then
      log "${files[0]}:"; cat "${files[0]}" >&2
      log "expected:"; echo "$expected" >&2
      fail "the $name export is not exactly the expected audience"
    fi
    log "$name export ${files[0]#"$REPO_ROOT"/} holds exactly the expected audience"
  }
  check_export Marketo "$CDP_EXPORTS_DIR/marketo" \
    "$(printf '%s\n' 'op,identity,firstName,lastName,title' 'add,p2@townsend.com,Paul,Okafor,"Director, Procurement"')"
  hash="$(printf '%s' 'p2@townsend.com' | sha256sum | cut -d' ' -f1)"
  check_export LinkedIn "$CDP_EXPORTS_DIR/linkedin" "$(printf '%s\n' 'op,identity' "add,$hash")"
  end
fi
