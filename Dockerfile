# mtls-proxy: the Debian package that scripts/package builds (a release binary with the Swift runtime linked in,
# --static-swift-stdlib), installed with apt-get on a slim Debian, so the image and the package hold the same
# files and the same dependencies. The image itself is not built in CI here (no container engine on the CI
# machines); the test suite lints this file with hadolint, and builds and installs the same package.
#
#   docker build --build-arg MTLS_PROXY_COMMIT="$(git rev-parse --short=12 HEAD)" -t mtls-proxy .
#   docker run --rm --read-only -p 127.0.0.1:3128:3128 \
#       -v "$PWD/proxy.conf:/etc/mtls-proxy/proxy.conf:ro" -v "$PWD/certs:/etc/mtls-proxy/certs:ro" mtls-proxy
#
# docs/container.md says what the config must listen on and how the key files must be owned (user 10001).
FROM swift:6.0-bookworm AS build
# Versions are not pinned: bookworm's security updates replace the pinned version in the archive, which would
# break the build; the packages come from the base image's own release, and the runtime stage takes them from
# the same one. dpkg-dev: dpkg-shlibdeps computes the package's Depends.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends libevent-dev libssl-dev libnghttp2-dev pkg-config dpkg-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift LICENSE README.md CHANGELOG.md proxy.conf.example ./
COPY Sources ./Sources
COPY Tests ./Tests
COPY scripts ./scripts
COPY deploy ./deploy
COPY docs/mtls-proxy.1 ./docs/mtls-proxy.1
# scripts/package, as scripts/test runs it; the commit for --version comes in as a build argument (no .git here).
ARG MTLS_PROXY_COMMIT=unknown
RUN MTLS_PROXY_COMMIT="$MTLS_PROXY_COMMIT" scripts/package && cp dist/mtls-proxy_*.deb /tmp/mtls-proxy.deb

FROM debian:bookworm-slim
COPY --from=build /tmp/mtls-proxy.deb /tmp/mtls-proxy.deb
# The package's group is made first with the image user's id, 10001: the key files are then 0640 root:10001
# on the host (docs/container.md), and the proxy reads them through its own group without a warning.
# apt-get installs the package's Depends (libevent, OpenSSL, libstdc++, adduser) from the same release, and
# OpenSSL's pkcs11 engine (the package's Suggests) so that identities with keys on PKCS#11 tokens work in the
# image too (the token's own module is mounted in, docs/tokens.md). Unpinned for the reason above.
# hadolint ignore=DL3008
RUN groupadd --system --gid 10001 mtls-proxy \
    && apt-get update && apt-get install -y --no-install-recommends /tmp/mtls-proxy.deb ca-certificates \
       libengine-pkcs11-openssl \
    && rm -rf /var/lib/apt/lists/* /tmp/mtls-proxy.deb
# The container config: listens on 0.0.0.0 (the container's own loopback is unreachable from outside it) and
# accepts only the container networks' addresses. Mount your own over it, made from the same file.
COPY deploy/container/proxy.conf /etc/mtls-proxy/proxy.conf
# `mtls-proxy health` reads the --config that the proxy (PID 1) was started with, else $MTLS_PROXY_CONFIG.
ENV MTLS_PROXY_CONFIG=/etc/mtls-proxy/proxy.conf
# A numeric user and group (no entry in /etc/passwd needed), so runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 3128
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s CMD ["/usr/bin/mtls-proxy", "health"]
ENTRYPOINT ["/usr/bin/mtls-proxy"]
CMD ["run"]
