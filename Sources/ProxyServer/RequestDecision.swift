import HTTP1
import ProxyConfig
import TLS

/// What becomes of a parsed request head (whose proxy credentials, if any are required, were accepted) on a given listener: forwarded upstream (with everything the exchange
/// needs), turned into a tunnel (CONNECT), or answered by the proxy. No sockets: it reads the runtime's routes and
/// TLS contexts, and fills the exchange's access record as it decides.
enum RequestDecision {
    /// Forward: the exchange now holds the target, route, upgrade and upstream head (its body state was set with the head); the upstream
    /// connection is to be taken or made for `key` with `context`.
    case forward(key: PoolKey, context: ClientTLSContext)
    case tunnel
    case answer(ProxyErrorResponse, close: Bool, extraHeaders: [(String, String)] = [])

    /// `framing` is the request's body framing as `BodyFraming.forRequest` found it (computed once per head).
    static func decide(_ head: RequestHead, framing requestFraming: Result<BodyFraming, any Error>, kind: ListenerKind,
                       runtime: ProxyRuntime, exchange: inout Exchange) -> RequestDecision {
        if head.method == "CONNECT" {
            switch kind {
            case .forward:
                return .tunnel
            case .fixed(let listener):
                return .answer(ProxyErrorResponse(status: 405, errorType: .httpRequestError,
                                                  details: "CONNECT is not accepted on \(listener.configKey), which sends every request to \(listener.upstreamURL)"),
                               close: true)
            case .intercepted, .plainTunnel:
                return .answer(ProxyErrorResponse(status: 405, errorType: .httpRequestError,
                                                  details: "CONNECT inside a tunnel is not accepted"), close: true)
            }
        }
        let framing: BodyFraming
        var target: AbsoluteTarget
        do {
            framing = try requestFraming.get()
            // Checked on every listener, before Host is rewritten for the upstream (RFC 9112 §3.2).
            let hosts = try HostField.check(head.headers)
            if head.version == .http11 && hosts == 0 { throw HTTPParseError.missingHost }
            switch kind {
            case .forward:
                let knownHosts = runtime.router.knownHosts
                let recentHost = exchange.recentHost
                target = try head.withTargetBytes { try AbsoluteTarget.parse($0, knownHosts: knownHosts, recentHost: recentHost) }
            case .fixed(let listener):
                // A base-URL client sends origin form; the upstream is the listener's, whatever Host says. A
                // proxy request (absolute form) means the client took the sidecar for the proxy: say which is which.
                if head.target.first != "/" && head.target != "*" {
                    return .answer(ProxyErrorResponse(status: 400, errorType: .httpRequestError,
                        details: "\(listener.configKey) sends every request to \(listener.upstreamURL) and takes paths (http://\(listener.listen)/...), not proxy requests; use the forward listener \(runtime.config.proxy.listen) as HTTP_PROXY, or call this listener directly"),
                        close: true)
                }
                try AbsoluteTarget.checkOriginForm(head.target)
                target = AbsoluteTarget(scheme: "https", host: listener.host, explicitPort: listener.port, pathAndQuery: head.target)
            case .intercepted(let host, let port):
                // Inside a tunnel the host is the one CONNECT named; Host is rewritten to it.
                try AbsoluteTarget.checkOriginForm(head.target)
                target = AbsoluteTarget(scheme: "https", host: host, explicitPort: port, pathAndQuery: head.target)
            case .plainTunnel(let host):
                // Plain HTTP inside a CONNECT to port 80: each request is the host's http:// URL (origin form, or
                // absolute form), routed and re-originated like a forward request. The host is the one CONNECT
                // named, whatever Host or an absolute target says; Host is rewritten to it.
                let pathAndQuery = head.target.first == "/" ? head.target : try AbsoluteTarget.parse(head.target).pathAndQuery
                try AbsoluteTarget.checkOriginForm(pathAndQuery)
                target = AbsoluteTarget(scheme: "http", host: host, explicitPort: nil, pathAndQuery: pathAndQuery)
            }
        } catch {
            return .answer(.badRequest((error as? HTTPParseError) ?? .invalidRequestLine), close: true)
        }
        if let refusal = Refusals.nonCanonicalHost(target.host) { return .answer(refusal, close: true) }
        // A forward request for one of the proxy's own listeners (missing from NO_PROXY) is refused by name.
        if case .forward = kind, let own = runtime.config.ownListener(host: target.host, port: target.explicitPort ?? 80) {
            return .answer(Refusals.ownListener(own, host: target.host, port: target.explicitPort ?? 80), close: framing != .none)
        }
        exchange.record.scheme = target.scheme
        exchange.record.host = target.host
        let hasBody = framing != .none

        // An http:// URL without a port means the service's https port.
        let port = target.explicitPort ?? 443
        exchange.record.port = port
        // Route decision: the path is normalised to its one canonical form, routed on that form, and that form
        // is what goes upstream; spellings some server would read differently get 400.
        let match: RouteMatch
        switch RequestRouting.decide(runtime.router, host: target.host, port: port, path: target.path) {
        case .routed(let canonicalPath, let decided):
            match = decided
            target.replacePath(with: canonicalPath)
            exchange.record.path = canonicalPath
        case .refused(let refusal, let decided):
            exchange.record.path = String(target.path)
            exchange.record.route = decided?.label ?? ""
            return .answer(RequestRouting.badRequest(refusal, match: decided), close: true)
        }
        exchange.record.route = match.label

        let context: ClientTLSContext
        switch match.action {
        case .deny:
            return .answer(Refusals.denied(match, host: target.host, port: port), close: hasBody)
        case .mtls(let identity):
            exchange.record.identity = identity
            fallthrough
        case .tls:
            switch runtime.context(for: match) {
            case .context(let ctx): context = ctx
            case .noValidCertificate(let identity, let expiry):
                let when = expiry.map { " (the last one expired at \(UTCTime.readable($0)))" } ?? ""
                return .answer(ProxyErrorResponse(status: 502, errorType: .proxyConfigurationError,
                                                  details: "identity \(identity) has no currently valid certificate\(when)",
                                                  advice: "Stage a valid certificate for identity \(identity) in the proxy's config; run `mtls-proxy check` to see its certificates."),
                               close: hasBody)
            }
        }
        exchange.record.certificateSerial = context.credential?.leafSerialHex

        var upgrade: String?
        if let value = head.headers.first("Upgrade").flatMap(Forwarding.forwardableUpgrade), !hasBody, head.version == .http11,
           head.headers.listElements("Connection").contains(where: { $0.equalsIgnoringASCIICase("upgrade") }) {
            upgrade = value
        }
        // Host as `target.hostHeader(port:defaultPort: 443)` spells it, written in place.
        // TE: trailers passes (RFC 9113 §8.2.2 lets only that value through to HTTP/2) when the response's trailers can
        // reach the client: an HTTP/1.1 client (its responses are chunked), or a route that may speak HTTP/2 (gRPC
        // servers require it); other TE values never.
        let teTrailers = upgrade == nil && (match.httpProtocol != .http11 || head.version == .http11)
        Forwarding.upstreamRequest(head, pathAndQuery: target.pathAndQuery, host: target.host, bracketed: target.isIPv6Literal,
                                   port: port == 443 ? nil : port, framing: framing, upgrade: upgrade, teTrailers: teTrailers,
                                   into: &exchange.upstreamRequestHead)
        exchange.upgrade = upgrade
        // An upgrade (WebSocket) goes over HTTP/1.1 whatever the route's protocol: HTTP/2 has no 101.
        exchange.key = PoolKey(host: target.host, port: port, connect: match.connect, context: ObjectIdentifier(context),
                               egress: match.egress, httpProtocol: upgrade == nil ? match.httpProtocol : .http11)
        exchange.target = target
        exchange.match = match
        return .forward(key: exchange.key!, context: context)
    }
}
