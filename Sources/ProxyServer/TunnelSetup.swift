import HTTP1
import ProxyConfig

/// What a CONNECT becomes, decided from its target and the route table alone (no sockets, no OpenSSL):
/// a blind tunnel for a `tls` route; an opened tunnel whose first bytes choose how it is served (interception
/// of TLS for an `mtls` route when the local CA is set up, plain forward requests for HTTP sent inside a CONNECT
/// to port 80 of a routed host); else a refusal. The client connection carries the decision out
/// (`ClientConnection.startTunnel`, then `OpenedTunnel` and `Inside.service(firstByte:)` for an opened tunnel).
struct TunnelSetup {
    enum Mode {
        /// TCP to the upstream; TLS runs end to end between the workflow and the service.
        case blind
        /// The proxy answers 200 and then reads the client's first byte: `inside` says what TLS (a ClientHello,
        /// 0x16) and what anything else (a plain HTTP request) become.
        case open(Inside)
        /// Answered with this error; no tunnel.
        case refuse(ProxyErrorResponse)
    }

    /// How an opened tunnel is served, by what the client sends first.
    struct Inside: Equatable {
        enum Service: Equatable {
            /// Terminate the client's TLS with a leaf minted for the host and serve the requests inside, each
            /// routed by its path (`identity` is the host-level route's, for the record).
            case intercept(identity: String?)
            /// Serve the plain HTTP/1.1 requests inside as forward requests for `http://host/...`, re-originated
            /// over TLS to the host's https port, each routed by its path.
            case plainRequests
            /// Close: the client sent what this tunnel cannot serve. `answerInPlain`: the client speaks plain
            /// HTTP, so the refusal goes out as an HTTP response; else it is logged and the connection closed.
            case refuse(ProxyErrorResponse, answerInPlain: Bool)
        }

        /// What a TLS ClientHello becomes.
        var tls: Service
        /// What a plain HTTP request (any first byte but 0x16) becomes.
        var plain: Service

        /// The first byte of a TLS record carrying a handshake message (the ClientHello).
        static let tlsHandshakeRecord: UInt8 = 0x16

        func service(firstByte: UInt8) -> Service {
            firstByte == Self.tlsHandshakeRecord ? tls : plain
        }
    }

    var host: String
    var port: Int
    var match: RouteMatch?
    var mode: Mode

    /// The answer that opens a tunnel.
    static let established = Array("HTTP/1.1 200 Connection established\r\n\r\n".utf8)

    /// The port a CONNECT names when the client tunnels an `http://` URL (undici's `ProxyAgent`, Node's fetch).
    static let plainHTTPPort = 80

    /// Decides for `target` (the CONNECT's authority form, host:port).
    static func decide(target: String, router: Router, interceptionEnabled: Bool) -> TunnelSetup {
        let host: String
        let port: Int
        do {
            let authority = try AbsoluteTarget.parseAuthority(Array(target.utf8))
            guard let p = authority.port else { throw HTTPParseError.invalidTarget("CONNECT needs host:port") }
            host = authority.host
            port = p
        } catch let error as HTTPParseError {
            return TunnelSetup(host: "", port: 0, match: nil, mode: .refuse(.badRequest(error)))
        } catch {
            return TunnelSetup(host: "", port: 0, match: nil,
                               mode: .refuse(.badRequest(HTTPParseError.invalidTarget("CONNECT needs host:port"))))
        }
        if let refusal = Refusals.nonCanonicalHost(host) {
            return TunnelSetup(host: host, port: port, match: nil, mode: .refuse(refusal))
        }
        let setup = decideTLS(host: host, port: port, router: router, interceptionEnabled: interceptionEnabled)
        guard port == plainHTTPPort else { return setup }
        return withPlainRequests(setup, router: router)
    }

    /// The decision for TLS inside the tunnel: host-level routes decide (`Router.planTunnel`); path-scoped routes
    /// that decide differently make the tunnel intercepted (each request inside routed by its path), or refused
    /// when interception is off. Plain HTTP inside an intercepted tunnel is refused by name.
    private static func decideTLS(host: String, port: Int, router: Router, interceptionEnabled: Bool) -> TunnelSetup {
        let plan = router.planTunnel(host: host, port: port)
        let match = plan.decision
        var setup = TunnelSetup(host: host, port: port, match: match, mode: .blind)
        if port != 443 && match.route?.port != port && plan.kind != .deny {
            setup.mode = .refuse(ProxyErrorResponse(
                status: 403, errorType: .httpRequestDenied,
                details: "tunnels to port \(port) are refused unless a route names the port",
                advice: "Add port = \(port) to the route for \(host) if this tunnel should be allowed."))
            return setup
        }
        switch plan.kind {
        case .deny:
            setup.mode = .refuse(Refusals.denied(match, host: host, port: port))
        case .blindTunnel:
            setup.mode = .blind
        case .intercept:
            var identity: String?
            if case .mtls(let name) = match.action { identity = name }
            guard interceptionEnabled else {
                setup.mode = .refuse(TunnelRouting.interceptionRequired(plan, host: host))
                return setup
            }
            setup.mode = .open(Inside(tls: .intercept(identity: identity),
                                      plain: .refuse(plainInsideTLSTunnel(host: host, port: port), answerInPlain: true)))
        }
        return setup
    }

    /// A CONNECT to port 80 of a host that an `mtls` or `tls` route names: plain HTTP inside is served as that
    /// host's `http://` URLs would be (routed, like them, to its https port). TLS inside keeps the port-80 decision
    /// (interception when a route names port 80, a refusal otherwise); a blind tunnel a route asked for stays blind.
    private static func withPlainRequests(_ setup: TunnelSetup, router: Router) -> TunnelSetup {
        if case .blind = setup.mode { return setup }
        let plan = router.planTunnel(host: setup.host, port: 443)
        guard plan.kind != .deny, plan.decision.route != nil || !plan.pathRoutes.isEmpty else { return setup }
        var plain = setup
        plain.match = plan.decision
        switch setup.mode {
        case .open(let inside):
            plain.mode = .open(Inside(tls: inside.tls, plain: .plainRequests))
        case .refuse(let refusal):
            let tls = ProxyErrorResponse(
                status: refusal.status, errorType: refusal.errorType,
                details: "TLS was sent inside a CONNECT to port 80 of \(setup.host), where only plain HTTP is served: \(refusal.details)",
                advice: "Send http:// URLs through this tunnel; for https:// URLs, CONNECT to port 443. " + refusal.advice)
            plain.mode = .open(Inside(tls: .refuse(tls, answerInPlain: false), plain: .plainRequests))
        case .blind:
            break
        }
        return plain
    }

    static func plainInsideTLSTunnel(host: String, port: Int) -> ProxyErrorResponse {
        ProxyErrorResponse(
            status: 400, errorType: .httpRequestError,
            details: "plain HTTP was sent inside a CONNECT to port \(port) of \(host); the proxy expected TLS there",
            advice: "Send http:// URLs to the proxy as forward requests (HTTP_PROXY), or tunnel them to port 80; CONNECT to port \(port) carries https:// URLs.")
    }
}

/// What a CONNECT that carries TLS (an `https://` URL through HTTPS_PROXY) gets, for `mtls-proxy explain`: the
/// data path's own decision (`TunnelSetup.decide`), without sockets.
public struct TunnelTLSOutcome: Sendable {
    public enum Kind: Sendable {
        /// TCP to the upstream; the workflow's TLS runs end to end, with no client certificate from the proxy.
        case blindTunnel
        /// The proxy terminates the workflow's TLS with the local CA and routes each request inside by its path.
        case intercepted(identity: String?)
        /// Answered with this error: before a tunnel opens, or (`afterOpening`) when the ClientHello arrives.
        case refused(ProxyErrorResponse, afterOpening: Bool)
    }

    /// The host-level route that decided, if the target was understood.
    public var match: RouteMatch?
    public var kind: Kind

    /// `target` is the CONNECT's authority (host:port).
    public static func decide(target: String, router: Router, interceptionEnabled: Bool) -> TunnelTLSOutcome {
        let setup = TunnelSetup.decide(target: target, router: router, interceptionEnabled: interceptionEnabled)
        switch setup.mode {
        case .blind:
            return TunnelTLSOutcome(match: setup.match, kind: .blindTunnel)
        case .refuse(let refusal):
            return TunnelTLSOutcome(match: setup.match, kind: .refused(refusal, afterOpening: false))
        case .open(let inside):
            switch inside.tls {
            case .intercept(let identity):
                return TunnelTLSOutcome(match: setup.match, kind: .intercepted(identity: identity))
            case .refuse(let refusal, _):
                return TunnelTLSOutcome(match: setup.match, kind: .refused(refusal, afterOpening: true))
            case .plainRequests:
                // TLS inside a tunnel is never served as plain requests; said as a refusal rather than trapping.
                return TunnelTLSOutcome(match: setup.match, kind: .refused(ProxyErrorResponse(
                    status: 400, errorType: .httpRequestError, details: "TLS is not served inside this tunnel"), afterOpening: true))
            }
        }
    }
}

extension AccessRecord {
    /// The CONNECT's record: its target and the host-level decision.
    mutating func describe(_ setup: TunnelSetup) {
        method = "CONNECT"
        scheme = "connect"
        host = setup.host
        port = setup.port
        path = ""
        if let match = setup.match {
            route = match.label
            if case .mtls(let name) = match.action { identity = name }
        }
    }
}
