/// The routing decision for one request: which route, or the unmatched policy.
public struct RouteMatch: Sendable, Equatable {
    /// nil when no route matched and the `unmatched` policy applied.
    public var route: Route?
    public var action: RouteAction
    public var trust: TrustSettings
    public var timeouts: Timeouts
    public var connect: HostPort?
    /// The SSRF guard does not apply: the route allows private addresses, or names the address to dial.
    public var allowPrivate: Bool = false
    /// Path spellings the deciding route (or `[upstream]`, when none matched) accepts.
    public var pathRules: PathRules = PathRules()

    /// How logs name the decision.
    public var label: String { route?.label ?? "unmatched" }

    /// Which fields of the route matched, for `explain`-style output.
    public var reason: String {
        guard let route else { return "no route matches; [proxy] unmatched = \"\(action == .deny ? "deny" : "tls")\"" }
        var parts = ["host \(route.host)"]
        if let port = route.port { parts.append("port \(port)") }
        if let prefix = route.pathPrefix { parts.append("path prefix \(prefix)") }
        return "first matching route, on " + parts.joined(separator: ", ")
    }
}

/// Why a route did not decide a request.
public enum RouteSkip: Sendable, Equatable, CustomStringConvertible {
    case host(pattern: HostPattern, host: String)
    case port(route: Int, request: Int)
    case pathPrefix(prefix: String, path: String)
    /// A CONNECT is decided by host-level routes; a path-scoped route applies to the requests inside.
    case pathScoped(prefix: String)

    public var description: String {
        switch self {
        case .host(let pattern, let host): return "host \(pattern) does not match \(host)"
        case .port(let route, let request): return "port \(route) does not match \(request)"
        case .pathPrefix(let prefix, let path): return "path prefix \(prefix) does not match \(path)"
        case .pathScoped(let prefix): return "path prefix \(prefix): a tunnel is decided by routes without a path"
        }
    }
}

/// A decision with its reasons: the routes passed over before it, each with why.
public struct RouteExplanation: Sendable, Equatable {
    public var match: RouteMatch
    public var skipped: [Skipped]

    public struct Skipped: Sendable, Equatable {
        public var route: Route
        public var reason: RouteSkip
    }
}

/// What to do with a CONNECT tunnel to one host and port.
public struct TunnelPlan: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case deny
        /// Bytes relayed as they are: every route that could apply inside is `tls` to the same address.
        case blindTunnel
        /// The tunnel must be terminated (interception) so each request inside is routed by its path, or the
        /// host-level route presents a client certificate.
        case intercept
    }

    public var kind: Kind
    /// The host-level decision (the first route without a path, or the unmatched policy): logs and metrics
    /// name it.
    public var decision: RouteMatch
    /// Path-scoped routes ahead of the host-level one that decide differently (action or dialled address):
    /// the reason a tunnel that would otherwise be blind or denied has to be intercepted.
    public var pathRoutes: [Route]
}

/// Matches requests against routes in file order; the first match wins. Every decision (forwarded requests,
/// CONNECT, `explain`) goes through `firstMatch`.
public struct Router: Sendable {
    public var routes: [Route]
    public var unmatched: UnmatchedPolicy
    public var upstream: UpstreamSettings

    public init(routes: [Route], unmatched: UnmatchedPolicy, upstream: UpstreamSettings) {
        self.routes = routes
        self.unmatched = unmatched
        self.upstream = upstream
    }

    /// - Parameters:
    ///   - host: canonical host of the request (lower case, no trailing dot).
    ///   - port: the upstream port the request will go to.
    ///   - path: the canonical path (see the request path normaliser), without the query.
    public func match(host: String, port: Int, path: Substring) -> RouteMatch {
        firstMatch(host: host, port: port, path: path) { _, _ in }
    }

    /// The same decision as `match`, with every route passed over and why.
    public func explain(host: String, port: Int, path: Substring?) -> RouteExplanation {
        var skipped: [RouteExplanation.Skipped] = []
        let match = firstMatch(host: host, port: port, path: path) { skipped.append(.init(route: $0, reason: $1)) }
        return RouteExplanation(match: match, skipped: skipped)
    }

    /// The host-level decision for a CONNECT tunnel: routes with a path prefix do not take part.
    public func matchTunnel(host: String, port: Int) -> RouteMatch {
        firstMatch(host: host, port: port, path: nil) { _, _ in }
    }

    /// Decides a CONNECT tunnel: by the host-level route, unless path-scoped routes ahead of it decide
    /// differently, in which case only an intercepted tunnel (each request routed by its path) is safe.
    public func planTunnel(host: String, port: Int) -> TunnelPlan {
        var pathScoped: [Route] = []
        let decision = firstMatch(host: host, port: port, path: nil) { route, reason in
            if case .pathScoped = reason { pathScoped.append(route) }
        }
        let differing = pathScoped.filter { $0.action != decision.action || $0.connect != decision.connect }
        let kind: TunnelPlan.Kind
        if !differing.isEmpty {
            kind = .intercept
        } else {
            switch decision.action {
            case .deny: kind = .deny
            case .tls: kind = .blindTunnel
            case .mtls: kind = .intercept
            }
        }
        return TunnelPlan(kind: kind, decision: decision, pathRoutes: differing)
    }

    /// The one match function. `path` nil means a tunnel: path-scoped routes are skipped.
    func firstMatch(host: String, port: Int, path: Substring?, skipped: (Route, RouteSkip) -> Void) -> RouteMatch {
        for route in routes {
            guard route.host.matches(host) else {
                skipped(route, .host(pattern: route.host, host: host))
                continue
            }
            if let p = route.port, p != port {
                skipped(route, .port(route: p, request: port))
                continue
            }
            if let prefix = route.pathPrefix {
                guard let path else {
                    skipped(route, .pathScoped(prefix: prefix))
                    continue
                }
                guard path.hasPrefix(prefix) else {
                    skipped(route, .pathPrefix(prefix: prefix, path: String(path)))
                    continue
                }
            }
            return RouteMatch(route: route, action: route.action, trust: route.trust, timeouts: route.timeouts, connect: route.connect,
                              allowPrivate: route.allowPrivate, pathRules: route.pathRules)
        }
        return unmatchedMatch
    }

    var unmatchedMatch: RouteMatch {
        RouteMatch(route: nil, action: unmatched == .deny ? .deny : .tls, trust: upstream.trust,
                   timeouts: upstream.timeouts, connect: nil, allowPrivate: upstream.allowPrivate, pathRules: upstream.pathRules)
    }
}
