import CEventTLS
import ProxyConfig

/// What was seen when a TLS connection to an upstream failed, gathered from OpenSSL and the socket. The proxy
/// turns it into an HTTP response (`ConnectFailures` in ProxyServer); this module knows nothing of HTTP.
public struct UpstreamTLSFailure: Sendable {
    public enum Phase: Sendable {
        /// The handshake itself failed.
        case handshake
        /// The handshake completed, then the first read failed or the connection closed before any response
        /// byte: with TLS 1.3 this is where a server's rejection of the client certificate shows up.
        case afterHandshake
    }

    public var phase: Phase
    public var host: String
    public var port: Int
    /// The identity presented, nil for a `tls` route.
    public var identity: String?
    public var certificateSubject: String?
    /// `SSL_get_verify_result`; 0 is X509_V_OK.
    public var verifyResult: Int
    public var verifyMessage: String
    public var errors: [OpenSSLErrorEntry]
    /// An errno from the socket, 0 if none.
    public var socketErrno: Int32
    /// The peer closed (EOF) without an alert.
    public var closed: Bool
    /// The proxy's own refusal of the server's certificate (pin, revocation), when that is why it failed.
    public var trustRefusal: TrustRefusal?
    /// Where the route's CRLs come from (`crl_files`, `crl_fetch`), for the advice on a CRL that is unavailable.
    public var crlSources: CRLSources

    /// Where a route's CRLs come from.
    public struct CRLSources: Sendable, Equatable {
        public var files: Bool
        public var fetched: Bool

        public init(files: Bool = false, fetched: Bool = false) {
            self.files = files
            self.fetched = fetched
        }

        /// The CRL sources the route checks with `trust`.
        public init(_ trust: TrustSettings) {
            self.init(files: !trust.checkedCRLFiles.isEmpty, fetched: trust.fetchesCRLs)
        }
    }

    public init(phase: Phase, host: String, port: Int, identity: String?, certificateSubject: String?,
                verifyResult: Int, verifyMessage: String, errors: [OpenSSLErrorEntry], socketErrno: Int32, closed: Bool,
                trustRefusal: TrustRefusal? = nil, crlSources: CRLSources = CRLSources()) {
        self.trustRefusal = trustRefusal
        self.crlSources = crlSources
        self.phase = phase
        self.host = host
        self.port = port
        self.identity = identity
        self.certificateSubject = certificateSubject
        self.verifyResult = verifyResult
        self.verifyMessage = verifyMessage
        self.errors = errors
        self.socketErrno = socketErrno
        self.closed = closed
    }

    public static let alertNames: [Int: String] = [
        0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
        40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate", 44: "certificate_revoked",
        45: "certificate_expired", 46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca",
        49: "access_denied", 50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
        71: "insufficient_security", 80: "internal_error", 86: "inappropriate_fallback", 90: "user_canceled",
        109: "missing_extension", 110: "unsupported_extension", 112: "unrecognized_name",
        113: "bad_certificate_status_response", 115: "unknown_psk_identity", 116: "certificate_required",
        120: "no_application_protocol",
    ]

    /// Alerts by which a server says it did not accept the client's certificate (or its absence).
    public static let clientCertificateAlerts: Set<Int> = [42, 43, 44, 45, 46, 48, 49, 116]

    public var presented: String {
        guard let identity else { return "no client certificate (a tls route)" }
        if let subject = certificateSubject { return "identity \(identity) (\(subject))" }
        return "identity \(identity)"
    }

    public var upstream: String { "\(host):\(port)" }

    public static func errnoName(_ e: Int32) -> String {
        switch e {
        case 104: return "ECONNRESET"
        case 32: return "EPIPE"
        case 110: return "ETIMEDOUT"
        case 111: return "ECONNREFUSED"
        default: return "errno \(e)"
        }
    }
}
