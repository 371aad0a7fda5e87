# One image for the five cdp services and the `cdp` CLI: cdp-ingestion, cdp-identity, cdp-profile,
# cdp-segmentation, cdp-destination and cdp in /usr/local/bin; compose.yaml runs one service per
# container from it (one `command:` each).
#
# Swift is not built inside a container here: the binaries are built on the host first, with the Swift
# standard library linked in, so that at run time they need only libnghttp2, libsqlite3, libstdc++, libgcc_s,
# libm, zlib and libc from plain Debian 12:
#
#   Examples/build-release.sh   # swift build -c release --static-swift-stdlib --scratch-path .build-static --product P,
#                               # for each P of cdp-ingestion cdp-identity cdp-profile cdp-segmentation cdp-destination cdp
#
# then the image is built from a small context holding only what is copied below (the same paths as in
# the repository). Examples/compose-demo.sh stages one in .build/containers/context (the binaries with
# `strip --strip-debug`, which keeps the symbols backtraces need and drops a third of the size) and runs
# `podman build -f Dockerfile .build/containers/context`; that works the same with docker and podman,
# whatever either does with ignore files. Building from the repository root also works
# (`podman build -t localhost/cdp:dev .` or `docker build ...`): .dockerignore (read by docker, and by
# podman/buildah when there is no .containerignore) leaves out everything but these files, though both
# still walk the many-GB .build directory to apply it, and the binaries keep their debug info (an image
# of about 890 MB instead of 680 MB).
#
# The base image: docker.io/library/debian:bookworm-slim, pulled, or made locally by
# Examples/compose-demo.sh with debootstrap where no registry is reachable.
#
# Ports: each service listens on its own default (ingestion 7400, identity 7401, profile 7402,
# segmentation 7403, destination 7404) unless given CDP_PORT or --port; no CDP_PORT is set here, the image
# serves any of the five. CDP_HOST=0.0.0.0 makes a service listen on every interface of the container.
# (The `cdp` CLI reads CDP_HOST as the services' host: in these containers give it --host or --addr.)
# Data: CDP_DATA_DIR=/var/lib/cdp, each service in /var/lib/cdp/<service>; mount a volume there.
# Health: `cdp health --addr 127.0.0.1:<port>` (grpc.health.v1, exit 0 when SERVING), from compose.yaml's
# healthchecks; no HEALTHCHECK here (the port depends on the service, and OCI images drop HEALTHCHECK).
# Signals: the services handle SIGTERM themselves (graceful shutdown) and run fine as PID 1.
FROM docker.io/library/debian:bookworm-slim

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libnghttp2-14 libsqlite3-0 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && useradd --uid 10001 --user-group --home-dir /var/lib/cdp --no-create-home \
        --shell /usr/sbin/nologin cdp \
    && install -d -o cdp -g cdp -m 0750 /var/lib/cdp \
    && install -d -o cdp -g cdp -m 0755 /exports

COPY .build-static/release/cdp-ingestion .build-static/release/cdp-identity .build-static/release/cdp-profile \
     .build-static/release/cdp-segmentation .build-static/release/cdp-destination .build-static/release/cdp /usr/local/bin/
COPY Examples/bodea/ /usr/share/cdp/examples/bodea/

ENV CDP_HOST=0.0.0.0 CDP_DATA_DIR=/var/lib/cdp
# The services' default ports (documentation only; compose.yaml publishes them).
EXPOSE 7400-7404
VOLUME /var/lib/cdp
# uid:gid 10001:10001 ("cdp"): a bind-mounted directory the services write to (the file exports) must be
# writable by uid 10001.
USER 10001:10001
WORKDIR /var/lib/cdp
CMD ["cdp", "--help"]
