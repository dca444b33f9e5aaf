import HTTP1
import ProxyConfig

/// What a CONNECT becomes, decided from its target and the route table alone (no sockets, no OpenSSL):
/// a blind tunnel for a `tls` route, interception for an `mtls` route when the local CA is set up, else a refusal.
/// The client connection carries the decision out (`ClientConnection.startTunnel`).
///
/// A further mode fits here without touching the callers' shape: a CONNECT to port 80 whose first bytes are a
/// plain HTTP request (not a TLS ClientHello) served as plain forward requests, decided after the first read.
struct TunnelSetup {
    enum Mode {
        /// TCP to the upstream; TLS runs end to end between the workflow and the service.
        case blind
        /// The proxy answers 200, terminates the workflow's TLS with a leaf minted for `host`, and serves the
        /// requests inside, each routed by its path (`identity` is the host-level route's, for the record).
        case intercept(identity: String?)
        /// Answered with this error; no tunnel.
        case refuse(ProxyErrorResponse)
    }

    var host: String
    var port: Int
    var match: RouteMatch?
    var mode: Mode

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
        // Host-level routes decide (`Router.planTunnel`); path-scoped routes that decide differently make the
        // tunnel intercepted (each request inside routed by its path), or refused when interception is off.
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
            setup.mode = interceptionEnabled ? .intercept(identity: identity)
                                             : .refuse(TunnelRouting.interceptionRequired(plan, host: host))
        }
        return setup
    }
}
