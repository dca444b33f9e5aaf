# mtls-proxy: build a release binary with the Swift toolchain, the Swift runtime linked in statically
# (--static-swift-stdlib), and run it on a slim Debian with only the C libraries it links: libevent and OpenSSL.
# The image itself is not built in CI here (no container engine on the CI machines); the test suite lints this
# file with hadolint and builds the same static binary.
FROM swift:6.0-bookworm AS build
# Versions are not pinned: bookworm's security updates replace the pinned version in the archive, which would
# break the build; the packages come from the base image's own release, and the runtime stage takes them from
# the same one.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends libevent-dev libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Tests ./Tests
COPY scripts ./scripts
# scripts/build, as the tests build; the commit for --version comes in as a build argument (no .git here):
#   docker build --build-arg MTLS_PROXY_COMMIT="$(git rev-parse --short=12 HEAD)" -t mtls-proxy .
ARG MTLS_PROXY_COMMIT=unknown
RUN MTLS_PROXY_STATIC_STDLIB=1 MTLS_PROXY_COMMIT="$MTLS_PROXY_COMMIT" scripts/build release > /tmp/binary \
    && install -D -s "$(cat /tmp/binary)" /out/mtls-proxy

FROM debian:bookworm-slim
# Unpinned for the reason above: the shared libraries the binary links, from the release it was built against.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends \
        libevent-2.1-7 libevent-core-2.1-7 libevent-extra-2.1-7 libevent-openssl-2.1-7 libevent-pthreads-2.1-7 \
        libssl3 libstdc++6 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/mtls-proxy /usr/local/bin/mtls-proxy
COPY proxy.conf.example /etc/mtls-proxy/proxy.conf.example
# Mount the config at /etc/mtls-proxy/proxy.conf (or pass --config, or set MTLS_PROXY_CONFIG) and the
# certificates read-only, e.g. at /etc/mtls-proxy/certs. The config needs [admin] listen for the health check:
# `mtls-proxy health` reads the --config that the proxy (PID 1) was started with, else $MTLS_PROXY_CONFIG.
ENV MTLS_PROXY_CONFIG=/etc/mtls-proxy/proxy.conf
# A numeric user and group (no entry in /etc/passwd needed), so runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 3128
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s CMD ["/usr/local/bin/mtls-proxy", "health"]
ENTRYPOINT ["/usr/local/bin/mtls-proxy"]
CMD ["run"]
