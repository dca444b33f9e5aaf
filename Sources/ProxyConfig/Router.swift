import HTTP1

/// The routing decision for one request: which route, or the unmatched policy. Its fields live in one shared,
/// immutable storage object made when the router is, so handing a decision around per request retains one
/// reference instead of every string of the route (setting a field makes a new storage: value semantics hold).
public struct RouteMatch: Sendable, Equatable {
    final class Storage: Sendable {
        let route: Route?
        let action: RouteAction
        let trust: TrustSettings
        let timeouts: Timeouts
        let connect: HostPort?
        let allowPrivate: Bool
        let pathRules: PathRules

        init(route: Route?, action: RouteAction, trust: TrustSettings, timeouts: Timeouts, connect: HostPort?,
             allowPrivate: Bool, pathRules: PathRules) {
            self.route = route
            self.action = action
            self.trust = trust
            self.timeouts = timeouts
            self.connect = connect
            self.allowPrivate = allowPrivate
            self.pathRules = pathRules
        }
    }

    private var storage: Storage

    public init(route: Route?, action: RouteAction, trust: TrustSettings, timeouts: Timeouts, connect: HostPort?,
                allowPrivate: Bool = false, pathRules: PathRules = PathRules()) {
        storage = Storage(route: route, action: action, trust: trust, timeouts: timeouts, connect: connect,
                          allowPrivate: allowPrivate, pathRules: pathRules)
    }

    private mutating func update(route: Route?? = nil, action: RouteAction? = nil, trust: TrustSettings? = nil,
                                 timeouts: Timeouts? = nil, connect: HostPort?? = nil, allowPrivate: Bool? = nil,
                                 pathRules: PathRules? = nil) {
        let s = storage
        storage = Storage(route: route ?? s.route, action: action ?? s.action, trust: trust ?? s.trust,
                          timeouts: timeouts ?? s.timeouts, connect: connect ?? s.connect,
                          allowPrivate: allowPrivate ?? s.allowPrivate, pathRules: pathRules ?? s.pathRules)
    }

    /// nil when no route matched and the `unmatched` policy applied.
    public var route: Route? {
        get { storage.route }
        set { update(route: .some(newValue)) }
    }
    public var action: RouteAction {
        get { storage.action }
        set { update(action: newValue) }
    }
    public var trust: TrustSettings {
        get { storage.trust }
        set { update(trust: newValue) }
    }
    public var timeouts: Timeouts {
        get { storage.timeouts }
        set { update(timeouts: newValue) }
    }
    public var connect: HostPort? {
        get { storage.connect }
        set { update(connect: .some(newValue)) }
    }
    /// The SSRF guard does not apply: the route allows private addresses, or names the address to dial.
    public var allowPrivate: Bool {
        get { storage.allowPrivate }
        set { update(allowPrivate: newValue) }
    }
    /// Path spellings the deciding route (or `[upstream]`, when none matched) accepts.
    public var pathRules: PathRules {
        get { storage.pathRules }
        set { update(pathRules: newValue) }
    }

    public static func == (a: RouteMatch, b: RouteMatch) -> Bool {
        if a.storage === b.storage { return true }
        let x = a.storage, y = b.storage
        return x.route == y.route && x.action == y.action && x.trust == y.trust && x.timeouts == y.timeouts
            && x.connect == y.connect && x.allowPrivate == y.allowPrivate && x.pathRules == y.pathRules
    }

    /// How logs name the decision (read in place: the route is not copied).
    public var label: String { storage.route?.label ?? "unmatched" }

    /// The deciding route's 1-based position in the file, nil for the unmatched policy (read in place).
    public var routeIndex: Int? { storage.route?.index }

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
    public var routes: [Route] { didSet { prepare() } }
    public var unmatched: UnmatchedPolicy { didSet { prepare() } }
    public var upstream: UpstreamSettings { didSet { prepare() } }
    /// The decision of each route (by position in `routes`) and of the unmatched policy, made once.
    private var routeMatches: [RouteMatch] = []
    private var preparedUnmatched: RouteMatch?
    /// The routes' exact host names, for request targets to reuse (`AbsoluteTarget.parse(_:knownHosts:)`).
    public private(set) var knownHosts = KnownHosts()

    public init(routes: [Route], unmatched: UnmatchedPolicy, upstream: UpstreamSettings) {
        self.routes = routes
        self.unmatched = unmatched
        self.upstream = upstream
        prepare()
    }

    private mutating func prepare() {
        routeMatches = routes.map { route in
            RouteMatch(route: route, action: route.action, trust: route.trust, timeouts: route.timeouts, connect: route.connect,
                       allowPrivate: route.allowPrivate, pathRules: route.pathRules)
        }
        preparedUnmatched = RouteMatch(route: nil, action: unmatched == .deny ? .deny : .tls, trust: upstream.trust,
                                       timeouts: upstream.timeouts, connect: nil, allowPrivate: upstream.allowPrivate,
                                       pathRules: upstream.pathRules)
        knownHosts = KnownHosts(routes.compactMap { route -> String? in
            if case .exact(let host) = route.host { return host }
            return nil
        })
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
            // A blind tunnel would skip the route's pins or revocation checks: the proxy must make the TLS itself.
            case .tls: kind = decision.trust.checksBeyondChain ? .intercept : .blindTunnel
            case .mtls: kind = .intercept
            }
        }
        return TunnelPlan(kind: kind, decision: decision, pathRoutes: differing)
    }

    /// The one match function. `path` nil means a tunnel: path-scoped routes are skipped.
    func firstMatch(host: String, port: Int, path: Substring?, skipped: (Route, RouteSkip) -> Void) -> RouteMatch {
        for i in routes.indices {
            // Fields read in place: a route is copied only to report a skip.
            guard routes[i].host.matches(host) else {
                skipped(routes[i], .host(pattern: routes[i].host, host: host))
                continue
            }
            if let p = routes[i].port, p != port {
                skipped(routes[i], .port(route: p, request: port))
                continue
            }
            if let prefix = routes[i].pathPrefix {
                guard let path else {
                    skipped(routes[i], .pathScoped(prefix: prefix))
                    continue
                }
                guard path.hasPrefix(prefix) else {
                    skipped(routes[i], .pathPrefix(prefix: prefix, path: String(path)))
                    continue
                }
            }
            return routeMatches[i]
        }
        return unmatchedMatch
    }

    var unmatchedMatch: RouteMatch {
        if let preparedUnmatched { return preparedUnmatched }
        return RouteMatch(route: nil, action: unmatched == .deny ? .deny : .tls, trust: upstream.trust,
                   timeouts: upstream.timeouts, connect: nil, allowPrivate: upstream.allowPrivate, pathRules: upstream.pathRules)
    }
}
