import HTTP1

/// The routing decision for one request: which route, or the unmatched policy. Its fields live in one shared,
/// immutable storage object made when the router is, so handing a decision around per request retains one
/// reference instead of every string of the route (setting a field makes a new storage: value semantics hold).
public struct RouteMatch: Sendable, Equatable {
    /// What the decision does. A route's decision takes them from the route itself (stored once, not copied
    /// beside it: a table of 100,000 routes keeps 100,000 decisions).
    struct Fields: Sendable, Equatable {
        var action: RouteAction
        var trust: TrustSettings
        var timeouts: Timeouts
        var connect: HostPort?
        var allowPrivate: Bool
        var pathRules: PathRules
        var egress: Egress
        var httpProtocol: UpstreamProtocol
        var h2Connections: Int

        init(action: RouteAction, trust: TrustSettings, timeouts: Timeouts, connect: HostPort?, allowPrivate: Bool,
             pathRules: PathRules, egress: Egress, httpProtocol: UpstreamProtocol = .http11, h2Connections: Int = 4) {
            self.httpProtocol = httpProtocol
            self.h2Connections = h2Connections
            self.action = action
            self.trust = trust
            self.timeouts = timeouts
            self.connect = connect
            self.allowPrivate = allowPrivate
            self.pathRules = pathRules
            self.egress = egress
        }

        init(_ route: Route) {
            self.init(action: route.action, trust: route.trust, timeouts: route.timeouts, connect: route.connect,
                      allowPrivate: route.allowPrivate, pathRules: route.pathRules, egress: route.egress,
                      httpProtocol: route.httpProtocol, h2Connections: route.h2Connections)
        }
    }

    /// The routes a router decides with, shared by its decisions (each refers to its route by position, so a
    /// table of 100,000 routes holds each route once).
    final class RouteTable: Sendable {
        let routes: [Route]

        init(_ routes: [Route]) {
            self.routes = routes
        }
    }

    final class Storage: Sendable {
        /// The deciding route is `table.routes[position]`; nil table: the unmatched policy.
        let table: RouteTable?
        let position: Int
        /// nil when the fields are the route's own.
        let own: Fields?

        init(table: RouteTable?, position: Int, fields: Fields) {
            self.table = table
            self.position = position
            own = table.map { Fields($0.routes[position]) } == fields ? nil : fields
        }

        var route: Route? { table?.routes[position] }
        var fields: Fields { own ?? Fields(table!.routes[position]) }
    }

    private var storage: Storage

    public init(route: Route?, action: RouteAction, trust: TrustSettings, timeouts: Timeouts, connect: HostPort?,
                allowPrivate: Bool = false, pathRules: PathRules = PathRules(), egress: Egress = .direct,
                httpProtocol: UpstreamProtocol = .http11, h2Connections: Int = 4) {
        storage = Storage(table: route.map { RouteTable([$0]) }, position: 0,
                          fields: Fields(action: action, trust: trust, timeouts: timeouts, connect: connect,
                                         allowPrivate: allowPrivate, pathRules: pathRules, egress: egress,
                                         httpProtocol: httpProtocol, h2Connections: h2Connections))
    }

    /// The decision of the route at `position` in `table`, its fields as the route sets them.
    init(table: RouteTable, position: Int) {
        storage = Storage(table: table, position: position, fields: Fields(table.routes[position]))
    }

    private mutating func update(_ change: (inout Fields) -> Void, route: Route?? = nil) {
        var fields = storage.fields
        change(&fields)
        if let route {
            storage = Storage(table: route.map { RouteTable([$0]) }, position: 0, fields: fields)
        } else {
            storage = Storage(table: storage.table, position: storage.position, fields: fields)
        }
    }

    /// A field of the decision: its own copy once one was set, else read in place from the deciding route (the
    /// same name in `Fields` and `Route`).
    @inline(__always)
    private func field<Value>(_ own: KeyPath<Fields, Value>, _ inRoute: KeyPath<Route, Value>) -> Value {
        if let fields = storage.own { return fields[keyPath: own] }
        return storage.table!.routes[storage.position][keyPath: inRoute]
    }

    /// nil when no route matched and the `unmatched` policy applied.
    public var route: Route? {
        get { storage.route }
        set { update({ _ in }, route: .some(newValue)) }
    }
    public var action: RouteAction { get { field(\.action, \.action) } set { update { $0.action = newValue } } }
    public var trust: TrustSettings { get { field(\.trust, \.trust) } set { update { $0.trust = newValue } } }
    public var timeouts: Timeouts { get { field(\.timeouts, \.timeouts) } set { update { $0.timeouts = newValue } } }
    public var connect: HostPort? { get { field(\.connect, \.connect) } set { update { $0.connect = newValue } } }
    /// The SSRF guard does not apply: the route allows private addresses, or names the address to dial.
    public var allowPrivate: Bool { get { field(\.allowPrivate, \.allowPrivate) } set { update { $0.allowPrivate = newValue } } }
    /// Path spellings the deciding route (or `[upstream]`, when none matched) accepts.
    public var pathRules: PathRules { get { field(\.pathRules, \.pathRules) } set { update { $0.pathRules = newValue } } }

    /// Direct, or through which corporate proxy (the deciding route's, or `[upstream]`'s).
    public var egress: Egress { get { field(\.egress, \.egress) } set { update { $0.egress = newValue } } }

    /// The HTTP version spoken to the upstream (the deciding route's, or `[upstream]`'s).
    public var httpProtocol: UpstreamProtocol { get { field(\.httpProtocol, \.httpProtocol) } set { update { $0.httpProtocol = newValue } } }

    /// HTTP/2 connections per connection key (the deciding route's, or `[upstream]`'s).
    public var h2Connections: Int { get { field(\.h2Connections, \.h2Connections) } set { update { $0.h2Connections = newValue } } }

    public static func == (a: RouteMatch, b: RouteMatch) -> Bool {
        if a.storage === b.storage { return true }
        return a.storage.route == b.storage.route && a.storage.fields == b.storage.fields
    }

    /// How logs name the decision (read in place: the route is not copied).
    public var label: String { storage.table?.routes[storage.position].label ?? "unmatched" }

    /// The deciding route's 1-based position in the file, nil for the unmatched policy (read in place).
    public var routeIndex: Int? { storage.table?.routes[storage.position].index }

    /// Which fields of the route matched, for `explain`-style output.
    public var reason: String {
        guard let route else { return "no route matches; [proxy] unmatched = \"\(action == .deny ? "deny" : "tls")\"" }
        var parts = ["host \(route.host)"]
        if let port = route.port { parts.append("port \(port)") }
        if let prefix = route.pathPrefix { parts.append("path prefix \(prefix) (\(route.pathPrefixMatch.phrase))") }
        return "first matching route, on " + parts.joined(separator: ", ")
    }
}

/// Why a route did not decide a request.
public enum RouteSkip: Sendable, Equatable, CustomStringConvertible {
    case host(pattern: HostPattern, host: String)
    case port(route: Int, request: Int)
    case pathPrefix(prefix: String, rule: PathPrefixMatch, path: String)
    /// A CONNECT is decided by host-level routes; a path-scoped route applies to the requests inside.
    case pathScoped(prefix: String)

    public var description: String {
        switch self {
        case .host(let pattern, let host): return "host \(pattern) does not match \(host)"
        case .port(let route, let request): return "port \(route) does not match \(request)"
        case .pathPrefix(let prefix, let rule, let path): return "path prefix \(prefix) (\(rule.phrase)) does not match \(path)"
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
/// CONNECT, `explain`) is answered by the route index compiled when the router is made (`RouteIndex`), which
/// returns what the scan in file order (`scanFirstMatch`) would, at a cost that does not grow with the table.
public struct Router: Sendable {
    public var routes: [Route] { didSet { prepare() } }
    public var unmatched: UnmatchedPolicy { didSet { prepare() } }
    public var upstream: UpstreamSettings { didSet { prepare() } }
    /// The decision of each route (by position in `routes`) and of the unmatched policy, made once.
    private var routeMatches: [RouteMatch] = []
    private var preparedUnmatched: RouteMatch?
    private var index = RouteIndex()
    /// The routes' exact host names, for request targets to reuse (`AbsoluteTarget.parse(_:knownHosts:)`).
    public private(set) var knownHosts = KnownHosts()

    public init(routes: [Route], unmatched: UnmatchedPolicy, upstream: UpstreamSettings) {
        self.routes = routes
        self.unmatched = unmatched
        self.upstream = upstream
        prepare()
    }

    private mutating func prepare() {
        let table = RouteMatch.RouteTable(routes)
        routeMatches = routes.indices.map { RouteMatch(table: table, position: $0) }
        preparedUnmatched = nil
        preparedUnmatched = unmatchedMatch
        index = RouteIndex(routes: routes)
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
        decision(index.firstMatch(host: host, port: port, path: path))
    }

    /// The same decision as `match`, with every route passed over and why.
    public func explain(host: String, port: Int, path: Substring?) -> RouteExplanation {
        let position = index.firstMatch(host: host, port: port, path: path)
        var skipped: [RouteExplanation.Skipped] = []
        for i in routes.indices.prefix(position ?? routes.count) {
            // Every route ahead of the index's answer fails to match; the scan says on what.
            if let reason = Self.skipReason(routes[i], host: host, port: port, path: path) {
                skipped.append(.init(route: routes[i], reason: reason))
            }
        }
        return RouteExplanation(match: decision(position), skipped: skipped)
    }

    /// The host-level decision for a CONNECT tunnel: routes with a path prefix do not take part.
    public func matchTunnel(host: String, port: Int) -> RouteMatch {
        decision(index.firstMatch(host: host, port: port, path: nil))
    }

    /// Decides a CONNECT tunnel: by the host-level route, unless path-scoped routes ahead of it decide
    /// differently, in which case only an intercepted tunnel (each request routed by its path) is safe.
    public func planTunnel(host: String, port: Int) -> TunnelPlan {
        let position = index.firstMatch(host: host, port: port, path: nil)
        let pathScoped = index.pathScopedCandidates(host: host, port: port).prefix { $0 < position ?? Int.max }.map { routes[$0] }
        return Self.plan(decision: decision(position), pathScoped: pathScoped)
    }

    static func plan(decision: RouteMatch, pathScoped: [Route]) -> TunnelPlan {
        let differing = pathScoped.filter { $0.action != decision.action || $0.connect != decision.connect || $0.egress != decision.egress }
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

    private func decision(_ position: Int?) -> RouteMatch {
        guard let position else { return unmatchedMatch }
        return routeMatches[position]
    }

    // MARK: the scan in file order: the definition the index is tested against

    /// Why `route` does not decide the request, or nil when it matches. `path` nil means a tunnel: path-scoped
    /// routes are skipped.
    static func skipReason(_ route: Route, host: String, port: Int, path: Substring?) -> RouteSkip? {
        guard route.host.matches(host) else { return .host(pattern: route.host, host: host) }
        if let p = route.port, p != port { return .port(route: p, request: port) }
        if let prefix = route.pathPrefix {
            guard let path else { return .pathScoped(prefix: prefix) }
            guard route.pathPrefixMatch.matches(prefix: prefix, path: path) else {
                return .pathPrefix(prefix: prefix, rule: route.pathPrefixMatch, path: String(path))
            }
        }
        return nil
    }

    /// The first route in file order that matches, by trying each: what `RouteIndex` answers faster.
    func scanFirstMatch(host: String, port: Int, path: Substring?) -> Int? {
        routes.indices.first { Self.skipReason(routes[$0], host: host, port: port, path: path) == nil }
    }

    /// `planTunnel` by the scan.
    func scanPlanTunnel(host: String, port: Int) -> TunnelPlan {
        let position = scanFirstMatch(host: host, port: port, path: nil)
        let pathScoped = routes.prefix(position ?? routes.count).filter {
            if case .pathScoped = Self.skipReason($0, host: host, port: port, path: nil) { return true }
            return false
        }
        return Self.plan(decision: decision(position), pathScoped: pathScoped)
    }

    /// The decision of the `unmatched` policy with `[upstream]`'s settings (made once, by `prepare`).
    var unmatchedMatch: RouteMatch {
        if let preparedUnmatched { return preparedUnmatched }
        return RouteMatch(route: nil, action: unmatched == .deny ? .deny : .tls, trust: upstream.trust,
                          timeouts: upstream.timeouts, connect: nil, allowPrivate: upstream.allowPrivate, pathRules: upstream.pathRules,
                          egress: upstream.egress, httpProtocol: upstream.httpProtocol, h2Connections: upstream.h2Connections)
    }
}
