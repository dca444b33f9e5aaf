import CBuildInfo
import CEventTLS
import TLS

/// What `mtls-proxy --version` prints and the `mtls_proxy_build_info` metric carries: the proxy's version, the
/// git commit scripts/build recorded ("unknown" from a plain `swift build`), the Swift compiler, and the
/// OpenSSL and libevent libraries the process runs with.
public struct BuildInfo: Sendable, Equatable {
    public static let version = "0.1.0"

    public var version: String
    public var commit: String
    public var swift: String
    public var openssl: String
    public var libevent: String

    public static var current: BuildInfo {
        BuildInfo(version: version, commit: String(cString: mtls_proxy_build_commit()), swift: swiftVersion,
                  openssl: OpenSSLVersion.current, libevent: String(cString: event_get_version()))
    }

    /// The compiler's full version when scripts/build recorded it, else its major.minor.
    static var swiftVersion: String {
        let recorded = String(cString: mtls_proxy_build_swift_version())
        if !recorded.isEmpty { return recorded }
        #if compiler(>=6.4)
        return "6.4 or later"
        #elseif compiler(>=6.3)
        return "6.3"
        #elseif compiler(>=6.2)
        return "6.2"
        #elseif compiler(>=6.1)
        return "6.1"
        #else
        return "6.0"
        #endif
    }

    /// `mtls-proxy 0.1.0 (commit 1a2b3c4d5e6f)` and one line per library.
    public var text: String {
        """
        mtls-proxy \(version) (commit \(commit))
        swift \(swift)
        openssl \(openssl)
        libevent \(libevent)
        """
    }
}
