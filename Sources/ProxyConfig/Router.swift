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

/// Matches requests against routes in file order; the first match wins.
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
    ///   - host: lower-cased host of the request URL.
    ///   - port: the upstream port the request will go to.
    ///   - path: the path, without the query.
    public func match(host: String, port: Int, path: Substring) -> RouteMatch {
        for route in routes {
            guard route.host.matches(host) else { continue }
            if let p = route.port, p != port { continue }
            if let prefix = route.pathPrefix, !path.hasPrefix(prefix) { continue }
            return RouteMatch(route: route, action: route.action, trust: route.trust, timeouts: route.timeouts, connect: route.connect,
                              allowPrivate: route.allowPrivate)
        }
        return unmatchedMatch
    }

    /// The decision for a CONNECT tunnel: host and port only, since a tunnel has no path. Routes with a path
    /// prefix take part too (the path is decided per request inside an intercepted tunnel).
    public func matchTunnel(host: String, port: Int) -> RouteMatch {
        for route in routes {
            guard route.host.matches(host) else { continue }
            if let p = route.port, p != port { continue }
            return RouteMatch(route: route, action: route.action, trust: route.trust, timeouts: route.timeouts, connect: route.connect,
                              allowPrivate: route.allowPrivate)
        }
        return unmatchedMatch
    }

    var unmatchedMatch: RouteMatch {
        RouteMatch(route: nil, action: unmatched == .deny ? .deny : .tls, trust: upstream.trust,
                   timeouts: upstream.timeouts, connect: nil, allowPrivate: upstream.allowPrivate)
    }
}
