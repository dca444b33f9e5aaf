# mtls-proxy: build a release binary with the Swift toolchain, run it on a slim Debian with only its libraries.
# The build step is scripts/build, the same script scripts/test builds with. The image itself is not built in
# CI here (no container engine on the CI machines).
FROM swift:6.0-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libevent-dev libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Tests ./Tests
COPY scripts ./scripts
RUN install -D "$(scripts/build release)" /out/mtls-proxy

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        libevent-2.1-7 libevent-core-2.1-7 libevent-extra-2.1-7 libevent-openssl-2.1-7 libevent-pthreads-2.1-7 \
        libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin mtls-proxy
COPY --from=build /usr/lib/swift/linux/*.so /usr/lib/swift/linux/
COPY --from=build /out/mtls-proxy /usr/local/bin/mtls-proxy
COPY proxy.conf.example /etc/mtls-proxy/proxy.conf.example
ENV LD_LIBRARY_PATH=/usr/lib/swift/linux
# Mount the config at /etc/mtls-proxy/proxy.conf (or set MTLS_PROXY_CONFIG) and the certificates read-only,
# e.g. at /etc/mtls-proxy/certs. The config should set [admin] listen = "127.0.0.1:9901" for the health check.
ENV MTLS_PROXY_CONFIG=/etc/mtls-proxy/proxy.conf
USER mtls-proxy
EXPOSE 3128 9901
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s CMD ["/usr/local/bin/mtls-proxy", "health"]
ENTRYPOINT ["/usr/local/bin/mtls-proxy"]
CMD ["run"]
