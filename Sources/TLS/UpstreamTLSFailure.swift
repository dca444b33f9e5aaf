import CEventTLS
import HTTP1

/// What was seen when a TLS connection to an upstream failed, gathered from OpenSSL and the socket.
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

    public init(phase: Phase, host: String, port: Int, identity: String?, certificateSubject: String?,
                verifyResult: Int, verifyMessage: String, errors: [OpenSSLErrorEntry], socketErrno: Int32, closed: Bool) {
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

    static let alertNames: [Int: String] = [
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
    static let clientCertificateAlerts: Set<Int> = [42, 43, 44, 45, 46, 48, 49, 116]

    var presented: String {
        guard let identity else { return "no client certificate (a tls route)" }
        if let subject = certificateSubject { return "identity \(identity) (\(subject))" }
        return "identity \(identity)"
    }

    var upstream: String { "\(host):\(port)" }

    /// The response the caller gets: who rejected what, and what to do.
    public var response: ProxyErrorResponse {
        // 1. Our side refused the server's certificate.
        if verifyResult != 0 {
            return ProxyErrorResponse(
                status: 502, errorType: .tlsCertificateError,
                details: "the upstream \(upstream) presented a certificate that failed verification: \(verifyMessage)",
                advice: "The proxy did not trust the server. Check that the route's ca_file holds the CA that issued the server's certificate, and that the URL's host name is one the certificate names.")
        }
        // 2. The server sent an alert.
        if let alert = errors.lazy.compactMap(\.alert).first {
            let name = Self.alertNames[alert] ?? "alert \(alert)"
            var advice: String
            if Self.clientCertificateAlerts.contains(alert) || (alert == 40 && identity == nil) {
                if identity == nil {
                    advice = "The upstream rejected the connection with no client certificate; it probably requires mutual TLS. Give the route an identity."
                } else {
                    advice = "The upstream rejected the client certificate of \(presented). Make sure the service has this certificate on its allowlist (export it with `mtls-proxy certs \(identity!) --pem`), that it is not expired, and that its issuer is one the service trusts."
                }
            } else if alert == 70 || alert == 71 {
                advice = "The upstream and the proxy share no acceptable TLS version or cipher; the proxy requires TLS 1.2 or later."
            } else {
                advice = "The upstream ended the TLS handshake; \(presented) was offered."
            }
            return ProxyErrorResponse(
                status: 502, errorType: .tlsAlertReceived,
                details: "the upstream \(upstream) sent TLS alert \(name) (\(alert)); presented \(presented)",
                advice: advice)
        }
        // 3. Other OpenSSL failures.
        let real = errors.filter { !$0.isPseudo }
        if !real.isEmpty {
            let text = OpenSSLErrors.describe(real)
            var advice = "The TLS handshake with the upstream failed on the proxy's side."
            if text.contains("wrong version number") || text.contains("packet length too long") {
                advice = "The upstream does not speak TLS on this port (is it plain HTTP?)."
            } else if text.contains("unsupported protocol") || text.contains("protocol version") {
                advice = "The upstream offers only a TLS version below the route's min_tls."
            }
            return ProxyErrorResponse(status: 502, errorType: .tlsProtocolError,
                                      details: "TLS with the upstream \(upstream) failed: \(text)", advice: advice)
        }
        // 4. The connection closed or reset with no alert.
        let how = socketErrno != 0 ? "reset the connection (\(Self.errnoName(socketErrno)))" : "closed the connection"
        switch phase {
        case .afterHandshake where identity != nil:
            return ProxyErrorResponse(
                status: 502, errorType: .connectionTerminated,
                details: "the upstream \(upstream) \(how) right after the TLS handshake, before any response; presented \(presented)",
                advice: "It may have rejected the client certificate (TLS 1.3 servers reject after the handshake). Check that the service has this certificate on its allowlist.")
        case .afterHandshake:
            return ProxyErrorResponse(
                status: 502, errorType: .connectionTerminated,
                details: "the upstream \(upstream) \(how) before sending a response",
                advice: "It may require a client certificate; give the route an identity if so.")
        case .handshake:
            return ProxyErrorResponse(
                status: 502, errorType: .connectionTerminated,
                details: "the upstream \(upstream) \(how) during the TLS handshake; presented \(presented)",
                advice: "The upstream may not speak TLS on this port, or it refused the handshake.")
        }
    }

    static func errnoName(_ e: Int32) -> String {
        switch e {
        case 104: return "ECONNRESET"
        case 32: return "EPIPE"
        case 110: return "ETIMEDOUT"
        case 111: return "ECONNREFUSED"
        default: return "errno \(e)"
        }
    }
}
