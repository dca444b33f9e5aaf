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
        guard case .proxy(let proxy) = upstream.key.egress else { return directResponse(for: event, upstream: upstream, timeouts: timeouts) }
        let host = upstream.key.host, port = upstream.key.port
        switch event {
        case .corporateProxy(let failure):
            return response(for: failure, proxy: proxy, host: host, port: port)
        case .connectTimeout where upstream.corporateHopPhase != .tunnelled:
            return corporateTimeout(proxy: proxy, answered: false, connected: upstream.corporateHopPhase == .awaitingReply,
                                    host: host, port: port, timeouts: timeouts)
        case .connectTimeout:
            return ProxyErrorResponse(status: 504, errorType: .connectionTimeout,
                                      details: "the corporate proxy \(proxy) opened the tunnel, but no TLS handshake with \(host):\(port) finished within connect_timeout \(timeouts.connect)",
                                      advice: "The service (or the corporate proxy relaying it) is slow; raise connect_timeout if it is just slow.")
        case .prohibited:
            var response = directResponse(for: event, upstream: upstream, timeouts: timeouts)
            response.advice = "The request names a non-public IP address; nothing was sent to the corporate proxy \(proxy). If this upstream really is on a private network, set allow_private = true on its route."
            return response
        case .readTimeout:
            return directResponse(for: event, upstream: upstream, timeouts: timeouts)
        case .error, .eof:
            // Past the corporate proxy: a TLS or connection failure with the service, reached through the tunnel.
            var response = directResponse(for: event, upstream: upstream, timeouts: timeouts)
            response.details += " (through the corporate proxy \(proxy), which had opened the tunnel)"
            return response
        }
    }

    /// What a corporate proxy's refusal or failure becomes: always about that hop (`next-hop`), never blamed on
    /// the service.
    static func response(for failure: CorporateProxyFailure, proxy: EgressProxy, host: String, port: Int) -> ProxyErrorResponse {
        let hop = proxy.authority
        let credentials = proxy.credentialsFile.map { "proxy_credentials_file \($0)" }
        switch failure {
        case .refused(let status, let reason):
            let said = "the corporate proxy \(proxy) answered \(ProxyErrorResponse.statusText(status, reason: reason)) to CONNECT \(host):\(port)"
            switch status {
            case 407:
                let advice = credentials.map { "The corporate proxy did not accept the credentials in \($0) (one line user:password); check them." }
                    ?? "The corporate proxy wants credentials: put one line user:password in a file (mode 600) and name it with proxy_credentials_file."
                return ProxyErrorResponse(status: 502, errorType: .proxyConfigurationError, details: said, advice: advice,
                                          nextHop: hop, receivedStatus: status)
            case 403:
                return ProxyErrorResponse(status: 502, errorType: .httpRequestDenied, details: said,
                                          advice: "The corporate proxy's policy does not allow a tunnel to \(host):\(port); ask its operators to allow it.",
                                          nextHop: hop, receivedStatus: status)
            default:
                return ProxyErrorResponse(status: 502, errorType: .destinationUnavailable, details: said,
                                          advice: "The corporate proxy resolves and dials \(host) itself; it could not open the tunnel.",
                                          nextHop: hop, receivedStatus: status)
            }
        case .dns(let code):
            return ProxyErrorResponse(status: 502, errorType: .dnsError,
                                      details: "cannot resolve the corporate proxy's host \(proxy.host): \(String(cString: evutil_gai_strerror(code)))",
                                      advice: "Check the proxy URL in the config ([upstream] proxy or the route's proxy).", nextHop: hop)
        case .connect(let e):
            let type: ProxyErrorType = e == ECONNREFUSED ? .connectionRefused : .destinationUnavailable
            return ProxyErrorResponse(status: 502, errorType: type,
                                      details: "cannot connect to the corporate proxy \(proxy): \(String(cString: strerror(e)))",
                                      advice: "The corporate proxy is down or the address is wrong; \(host):\(port) was not tried.", nextHop: hop)
        case .closed(let e):
            let how = e == 0 ? "closed the connection" : "reset the connection (\(String(cString: strerror(e))))"
            return ProxyErrorResponse(status: 502, errorType: .connectionTerminated,
                                      details: "the corporate proxy \(proxy) \(how) before answering CONNECT \(host):\(port)",
                                      nextHop: hop)
        case .malformed(let why):
            return ProxyErrorResponse(status: 502, errorType: .httpProtocolError,
                                      details: "the corporate proxy \(proxy) answered CONNECT \(host):\(port) wrongly: \(why)",
                                      advice: "Is it an HTTP proxy? The proxy URL must name an HTTP proxy that supports CONNECT.", nextHop: hop)
        }
    }

    static func corporateTimeout(proxy: EgressProxy, answered: Bool, connected: Bool, host: String, port: Int,
                                 timeouts: Timeouts) -> ProxyErrorResponse {
        let what = connected ? "did not answer CONNECT \(host):\(port)" : "did not accept a connection"
        return ProxyErrorResponse(status: 504, errorType: .connectionTimeout,
                                  details: "the corporate proxy \(proxy) \(what) within connect_timeout \(timeouts.connect)",
                                  advice: connected ? "The corporate proxy may be slow to reach \(host); raise connect_timeout if so."
                                                    : "Check the corporate proxy's address and that it is up.",
                                  nextHop: proxy.authority)
    }

    /// The response for a direct connection's failure (and the service's side of a tunnelled one).
    private static func directResponse(for event: UpstreamConnection.Event, upstream: UpstreamConnection, timeouts: Timeouts) -> ProxyErrorResponse {
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
        case .error(_, let tls, _) where tokenSigningFailed(upstream, tls):
            return tokenSigningFailure(upstream, tls)
        case .error(let errno, let tls, _):
            return upstream.tlsFailure(errors: tls, errno: errno, closed: false).response
        case .eof:
            return upstream.tlsFailure(errors: OpenSSLErrors.drain(), errno: 0, closed: true).response
        case .corporateProxy(let failure):
            // Not reached: only connections through a corporate proxy report it.
            return response(for: failure, proxy: EgressProxy(host: "?", port: 0), host: host, port: port)
        }
    }

    /// The response for a blind tunnel that could not be opened.
    static func response(for outcome: TunnelDialer.Outcome, host: String, port: Int, timeouts: Timeouts) -> ProxyErrorResponse? {
        switch outcome {
        case .connected:
            return nil
        case .corporateProxy(let failure, let proxy):
            return response(for: failure, proxy: proxy, host: host, port: port)
        case .corporateTimeout(let proxy, let connected):
            return corporateTimeout(proxy: proxy, answered: false, connected: connected, host: host, port: port, timeouts: timeouts)
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

    /// Whether a handshake failed because the identity's key on a PKCS#11 token could not sign (the token was
    /// removed, its module lost it): failed on our side, before the handshake completed, with errors from the
    /// signing layers (EVP, the engine, the token's own library) and no alert from the server.
    static func tokenSigningFailed(_ upstream: UpstreamConnection, _ errors: [OpenSSLErrorEntry]) -> Bool {
        guard !upstream.handshakeCompleted, upstream.context.credential?.key.tokenSigner != nil,
              errors.allSatisfy({ $0.alert == nil }) else { return false }
        return errors.contains { e in
            e.library == ERR_LIB_EVP || e.library == ERR_LIB_ENGINE || e.library == ERR_LIB_EC || e.library == ERR_LIB_RSA
                || e.library >= ERR_LIB_USER
        }
    }

    /// 502 naming the identity and its token (the URI's object part: no module or PIN file), not the service.
    static func tokenSigningFailure(_ upstream: UpstreamConnection, _ errors: [OpenSSLErrorEntry]) -> ProxyErrorResponse {
        let identity = upstream.context.identityName ?? "?"
        let token = upstream.context.credential?.key.tokenSigner?.keyLabel ?? "?"
        let signer = upstream.context.credential?.key.tokenSigner
        var why = OpenSSLErrors.describe(errors.filter { !$0.isPseudo && $0.library != ERR_LIB_SSL })
        if let state = signer?.unavailability {
            let retry = max(0, state.retryAtMillis - TokenSigner.nowMillis())
            why = "the token is unavailable (\(state.reason)); next attempt in \((retry + 999) / 1000) s"
        }
        return ProxyErrorResponse(
            status: 502, errorType: .proxyConfigurationError,
            details: "identity \(identity) could not sign the TLS handshake with its key on the token \(token)\(why.isEmpty ? "" : ": \(why)")",
            advice: "Check that the token is present and its PKCS#11 module can reach it; routes of other identities are not affected. The proxy tries the token again by itself (after 1 s, then up to every 30 s) and recovers when it is back.")
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
    /// Where a certificate sits in the server's chain, for messages: depth 1 issued the server's certificate.
    static func chainPlace(_ depth: Int) -> String {
        depth == 1 ? "the intermediate that issued the server's certificate" : "a CA certificate \(depth) levels above the server's"
    }

    /// What to do about a CRL that is unavailable, naming what the route uses to get its CRLs: `crl_files` to
    /// update, or the distribution points `crl_fetch` fetches from (or both).
    static func crlUnavailableAdvice(depth: Int, sources: CRLSources) -> String {
        let from: String
        switch (sources.files, sources.fetched) {
        case (true, false): from = depth > 0 ? "Add that CRL to the route's crl_files" : "Update the route's crl_files"
        case (false, true):
            from = "The route fetches CRLs from the distribution points the certificates name (crl_fetch): that point must answer with a current CRL of the certificate's issuer"
        default:
            from = "Update the route's crl_files, or make the distribution point the certificate names (crl_fetch) answer with a current CRL of its issuer"
        }
        let soft = "revocation = \"soft\" to allow it while the CRL is missing or stale"
        return depth > 0
            ? "The route checks the whole chain: each CA certificate needs a current CRL from the CA above it. \(from); or set revocation_scope = \"leaf\" to check the server's certificate only, or \(soft)."
            : "The route requires a current CRL for the server's certificate. \(from) (or set \(soft))."
    }

    /// The response the caller gets: who rejected what, and what to do.
    var response: ProxyErrorResponse {
        // 0. The proxy's own checks beyond the chain: pins and revocation.
        if let refusal = trustRefusal {
            switch refusal {
            case .revoked(let subject, let serial, let depth) where depth > 0:
                return ProxyErrorResponse(
                    status: 502, errorType: .tlsCertificateError,
                    details: "the upstream \(upstream) presented a chain with a revoked CA certificate: \(subject), serial \(serial) (\(Self.chainPlace(depth))), is revoked by its issuer's CRL",
                    advice: "A CA certificate of the server's chain was revoked by the CA above it. The service must install a certificate from a CA that is not revoked; the proxy will not talk to this one.")
            case .revoked(let subject, let serial, _):
                return ProxyErrorResponse(
                    status: 502, errorType: .tlsCertificateError,
                    details: "the upstream \(upstream) presented a revoked certificate: \(subject), serial \(serial), is revoked by its CRL",
                    advice: "The certificate's issuer revoked it. The service must install a new certificate; the proxy will not talk to this one.")
            case .crlUnavailable(let subject, let serial, let reason, let depth):
                let place = depth > 0 ? " CA certificate \(subject), serial \(serial) (\(Self.chainPlace(depth)))" : " certificate \(subject), serial \(serial)"
                return ProxyErrorResponse(
                    status: 502, errorType: .tlsCertificateError,
                    details: "CRL unavailable for the upstream \(upstream)\(place): \(reason) (revocation = \"hard\")",
                    advice: Self.crlUnavailableAdvice(depth: depth, sources: crlSources))
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
