# syntax=docker/dockerfile:1
# meshtrace images, from one build of the workspace:
#   docker build --target proxy    -t ghcr.io/meshtrace/proxy:0.1.0 .
#   docker build --target injector -t ghcr.io/meshtrace/injector:0.1.0 .
#   docker build --target sample-service -t ghcr.io/meshtrace/sample-service:0.1.0 .   (examples/k8s/)

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target/ between builds; the binaries are copied out in
# the same step because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p meshtrace-proxy -p meshtrace-injector \
    && cargo build --release --locked -p meshtrace-examples --bin sample-service \
    && mkdir -p /out \
    && cp target/release/meshtrace-proxy target/release/meshtrace-cni \
        target/release/meshtrace-injector target/release/sample-service /out/

# The proxy, its init step (`meshtrace-proxy init`, which needs iptables), its postStart hook
# (`meshtrace-proxy await-ready`, no shell needed) and the CNI plugin with its installer
# (`meshtrace-cni install`, run by manifests/cni/; the plugin itself runs on the node and uses the
# node's iptables).
FROM debian:${DEBIAN_RELEASE}-slim AS proxy
# Debian's stable archive only carries the current security-patched version: pinning would break.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/meshtrace-proxy /out/meshtrace-cni /usr/local/bin/
# The proxy's identity (iptables lets its own traffic through by this uid); the init container
# runs as root through its securityContext.
USER 2102:2102
EXPOSE 4140 4143 4191
ENTRYPOINT ["/usr/local/bin/meshtrace-proxy"]

# The example application's services (examples/k8s/): frontend, backend-api-1 or backend-api-2
# by `--role`. It only forwards trace headers; the injected proxy does the tracing.
FROM gcr.io/distroless/cc-debian12:nonroot AS sample-service
COPY --from=build /out/sample-service /usr/local/bin/sample-service
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sample-service"]

# The admission webhook: a static-enough binary on a minimal non-root base.
FROM gcr.io/distroless/cc-debian12:nonroot AS injector
COPY --from=build /out/meshtrace-injector /usr/local/bin/meshtrace-injector
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/meshtrace-injector"]
