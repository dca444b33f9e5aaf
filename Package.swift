// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "mtls-proxy",
    products: [
        .executable(name: "mtls-proxy", targets: ["mtls-proxy"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
    ],
    targets: [
        // C headers for libevent and OpenSSL, plus static inline wrappers for the macros Swift cannot import.
        .systemLibrary(name: "CEventTLS", pkgConfig: "libevent_openssl libevent_pthreads openssl"),
        // The commit scripts/build records (build_commit.h, not committed), for --version and build_info.
        .target(name: "CBuildInfo"),
        // C headers for libnghttp2, the HTTP/2 framing of the upstream side.
        .systemLibrary(name: "CNGHTTP2", pkgConfig: "libnghttp2"),

        // Pure HTTP/1.1 parsing and serialising over bytes. No dependencies.
        .target(name: "HTTP1"),
        // HTTP/2 to the upstream: RFC 9113 §8 translation (pure) and an owning wrapper around a client
        // nghttp2_session that reads and writes memory, no sockets.
        .target(name: "HTTP2", dependencies: ["CNGHTTP2", "HTTP1"]),
        // Configuration model, validation, routing. No sockets, no OpenSSL.
        .target(name: "ProxyConfig", dependencies: [
            "HTTP1",  // the request-path normaliser, to check route path prefixes
            .product(name: "TOMLKit", package: "TOMLKit"),
        ]),
        // What check --format json and certs --ics print: the report model, iCalendar writer. Pure.
        .target(name: "Reports", dependencies: ["ProxyConfig"]),
        // The status page (admin `GET /` and `certs --html`): a plain model in, one self-contained HTML page out. Pure.
        .target(name: "StatusPage", dependencies: ["Reports", "ProxyConfig"]),
        // OpenSSL wrappers: certificates, keys, client contexts, error classification.
        .target(name: "TLS", dependencies: ["CEventTLS", "ProxyConfig", "HTTP1"]),
        // The data path on libevent: workers, listeners, client and upstream connections, pool.
        .target(name: "ProxyServer", dependencies: [
            "CEventTLS", "CBuildInfo", "HTTP1", "HTTP2", "ProxyConfig", "TLS", "Reports", "StatusPage",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        .executableTarget(name: "mtls-proxy", dependencies: [
            "ProxyServer", "ProxyConfig", "Reports", "StatusPage", "TLS",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        // The config loader's libFuzzer target (scripts/fuzz config); without -DFUZZING it builds as a stub.
        .executableTarget(name: "FuzzConfig", dependencies: ["ProxyConfig"], path: "Tests/Fuzz/Config"),

        .testTarget(name: "HTTP1Tests", dependencies: ["HTTP1"]),
        .testTarget(name: "HTTP2Tests", dependencies: ["HTTP2", "HTTP1", "CNGHTTP2"]),
        .testTarget(name: "ProxyConfigTests", dependencies: ["ProxyConfig"]),
        .testTarget(name: "ReportsTests", dependencies: ["Reports", "ProxyConfig"]),
        .testTarget(name: "StatusPageTests", dependencies: ["StatusPage", "Reports", "ProxyConfig"]),
        .testTarget(name: "TLSTests", dependencies: ["TLS", "ProxyConfig"]),
        .testTarget(name: "ProxyServerTests", dependencies: ["ProxyServer", "ProxyConfig", "TLS", "HTTP1", "CEventTLS", "StatusPage"]),
    ]
)
