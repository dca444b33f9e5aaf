# Build a release binary with the Swift toolchain, then run it on a slim Debian with only its libraries.
# Not built in CI here (no container engine); its build step is the same `swift build` scripts/test runs.
FROM swift:6.0-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libevent-dev libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --product mtls-proxy --static-swift-stdlib \
    && install -D "$(swift build -c release --show-bin-path)/mtls-proxy" /out/mtls-proxy

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        libevent-2.1-7 libevent-openssl-2.1-7 libevent-pthreads-2.1-7 libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin mtls-proxy
COPY --from=build /out/mtls-proxy /usr/local/bin/mtls-proxy
COPY proxy.conf.example /etc/mtls-proxy/proxy.conf.example
# Mount the real config at /etc/mtls-proxy/proxy.conf and the certificates read-only, e.g. at /etc/mtls-proxy/certs.
USER mtls-proxy
EXPOSE 3128
ENTRYPOINT ["/usr/local/bin/mtls-proxy"]
CMD ["run", "--config", "/etc/mtls-proxy/proxy.conf"]
