import CEventTLS
import HTTP1
import ProxyConfig
import TLS
#if canImport(Glibc)
import Glibc
#endif

/// Every way of failing to reach an upstream, mapped to the one response the client gets: the upstream
/// connection's events, a blind tunnel's dial outcome, and what OpenSSL reported (`UpstreamTLSFailure`).
/// The `TLS` module describes the failure; this is the only place that turns it into HTTP.
enum ConnectFailures {
    /// The response for an upstream connection's failure event, before any response byte arrived.
    static func response(for event: UpstreamConnection.Event, upstream: UpstreamConnection, timeouts: Timeouts) -> ProxyErrorResponse {
        let host = upstream.key.host, port = upstream.key.port
        let dialled = upstream.key.connect.map { " (dialling \($0))" } ?? ""
        switch event {
        case .prohibited(let address, let reason):
            return Refusals.prohibited(host: host, address: address, reason: reason)
        case .connectTimeout:
            return ProxyErrorResponse(status: 504, errorType: .connectionTimeout,
                                      details: "no TLS connection to \(host):\(port)\(dialled) within connect_timeout \(timeouts.connect)",
                                      advice: "The upstream did not answer in time. Check the address, the network path, and raise connect_timeout if it is just slow.")
        case .readTimeout:
            return ProxyErrorResponse(status: 504, errorType: .connectionReadTimeout,
                                      details: "the upstream \(host):\(port) sent no response within response_timeout \(timeouts.response)",
                                      advice: "Raise the route's response_timeout if the service is slow to answer.")
        case .error(_, _, let dnsError) where dnsError != 0:
            return ProxyErrorResponse(status: 502, errorType: .dnsError,
                                      details: "cannot resolve \(host): \(String(cString: evutil_gai_strerror(dnsError)))",
                                      advice: "Check the host name, or pin an address with connect = \"IP:PORT\" on the route.")
        case .error(let errno, let tls, _) where !upstream.handshakeCompleted && tls.allSatisfy(\.isPseudo)
            && UpstreamConnection.connectErrnos.contains(errno) && upstream.serverBytesRead == 0:
            if errno == ECONNREFUSED {
                return ProxyErrorResponse(status: 502, errorType: .connectionRefused,
                                          details: "\(host):\(port)\(dialled) refused the connection",
                                          advice: "Nothing is listening there: check the URL's port or the route's connect address.")
            }
            return ProxyErrorResponse(status: 502, errorType: .destinationUnavailable,
                                      details: "cannot reach \(host):\(port)\(dialled): \(String(cString: strerror(errno)))")
        case .error(let errno, let tls, _):
            return upstream.tlsFailure(errors: tls, errno: errno, closed: false).response
        case .eof:
            return upstream.tlsFailure(errors: OpenSSLErrors.drain(), errno: 0, closed: true).response
        }
    }

    /// The response for a blind tunnel that could not be opened.
    static func response(for outcome: TunnelDialer.Outcome, host: String, port: Int, timeouts: Timeouts) -> ProxyErrorResponse? {
        switch outcome {
        case .connected:
            return nil
        case .prohibited(let address, let reason):
            return Refusals.prohibited(host: host, address: address, reason: reason)
        case .timedOut:
            return ProxyErrorResponse(status: 504, errorType: .connectionTimeout,
                                      details: "no TCP connection to \(host):\(port) within connect_timeout \(timeouts.connect)")
        case .failed(let e, let dnsError):
            if dnsError != 0 {
                return ProxyErrorResponse(status: 502, errorType: .dnsError,
                                          details: "cannot resolve \(host): \(String(cString: evutil_gai_strerror(dnsError)))")
            }
            let type: ProxyErrorType = e == ECONNREFUSED ? .connectionRefused : .destinationUnavailable
            return ProxyErrorResponse(status: 502, errorType: type,
                                      details: "cannot connect to \(host):\(port): \(String(cString: strerror(e)))")
        }
    }

    /// The `reason` label of failed upstream connections.
    static func metricReason(_ type: ProxyErrorType) -> String {
        switch type {
        case .dnsError: return "dns"
        case .connectionRefused, .destinationUnavailable: return "connect"
        case .connectionTimeout: return "connect_timeout"
        case .destinationIPProhibited: return "prohibited"
        case .connectionReadTimeout: return "response_timeout"
        case .tlsCertificateError: return "tls_verify"
        case .tlsAlertReceived: return "tls_alert"
        case .httpProtocolError, .httpResponseIncomplete, .httpResponseHeaderSectionSize: return "http"
        default: return "closed"
        }
    }
}

extension UpstreamTLSFailure {
    /// The response the caller gets: who rejected what, and what to do.
    var response: ProxyErrorResponse {
        // 0. The proxy's own checks beyond the chain: pins and revocation.
        if let refusal = trustRefusal {
            switch refusal {
            case .revoked(let subject, let serial):
                return ProxyErrorResponse(
                    status: 502, errorType: .tlsCertificateError,
                    details: "the upstream \(upstream) presented a revoked certificate: \(subject), serial \(serial), is revoked by its CRL",
                    advice: "The certificate's issuer revoked it. The service must install a new certificate; the proxy will not talk to this one.")
            case .crlUnavailable(let subject, let serial, let reason):
                return ProxyErrorResponse(
                    status: 502, errorType: .tlsCertificateError,
                    details: "CRL unavailable for the upstream \(upstream) certificate \(subject), serial \(serial): \(reason) (revocation = \"hard\")",
                    advice: "The route requires a current CRL for the server's certificate. Update the route's crl_files (or set revocation = \"soft\" to allow it while the CRL is missing or stale).")
            case .ocspStapleInvalid(let subject, let serial, let reason):
                return ProxyErrorResponse(
                    status: 502, errorType: .tlsCertificateError,
                    details: "OCSP staple refused for the upstream \(upstream) certificate \(subject), serial \(serial): \(reason)",
                    advice: "The route requires a valid stapled OCSP response (require_ocsp_staple, or revocation = \"hard\" for an invalid one). The service must staple a current response from its CA's responder.")
            case .pinMismatch(let presented, let subject):
                return ProxyErrorResponse(
                    status: 502, errorType: .tlsCertificateError,
                    details: "the upstream \(upstream) presented a key that matches no pin of the route: \(subject), pin-sha256=\"\(presented)\"",
                    advice: "The service's key is not one the route's pin_spki_sha256 lists. If the service changed its key on purpose, add this pin (print pins with `mtls-proxy pins`).")
            }
        }
        // 1. Our side refused the server's certificate.
        if verifyResult != 0 {
            return ProxyErrorResponse(
                status: 502, errorType: .tlsCertificateError,
                details: "the upstream \(upstream) presented a certificate that failed verification: \(verifyMessage)",
                advice: "The proxy did not trust the server. Check that the route's ca_file holds the CA that issued the server's certificate, and that the URL's host name is one the certificate names.")
        }
        // 2. The server sent an alert.
        if let alert = errors.lazy.compactMap(\.alert).first {
            let name = UpstreamTLSFailure.alertNames[alert] ?? "alert \(alert)"
            var advice: String
            if UpstreamTLSFailure.clientCertificateAlerts.contains(alert) || (alert == 40 && identity == nil) {
                if identity == nil {
                    advice = "The upstream rejected the connection with no client certificate; it probably requires mutual TLS. Give the route an identity."
                } else {
                    advice = "The upstream rejected the client certificate of \(presented). Make sure the service has this certificate on its allowlist (export it with `mtls-proxy certs \(identity!) --pem`), that it is not expired, and that its issuer is one the service trusts."
                }
            } else if alert == 70 || alert == 71 {
                advice = "The upstream and the proxy share no acceptable TLS version, cipher or group: compare the route's TLS policy (tls_min_version, tls_max_version, tls_ciphers, tls_ciphersuites, tls_groups) with what the service offers."
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
                advice = "The upstream offers no TLS version within the route's tls_min_version and tls_max_version."
            }
            return ProxyErrorResponse(status: 502, errorType: .tlsProtocolError,
                                      details: "TLS with the upstream \(upstream) failed: \(text)", advice: advice)
        }
        // 4. The connection closed or reset with no alert.
        let how = socketErrno != 0 ? "reset the connection (\(UpstreamTLSFailure.errnoName(socketErrno)))" : "closed the connection"
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

}
