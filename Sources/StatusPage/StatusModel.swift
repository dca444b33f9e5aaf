import Reports

/// Everything the status page shows, as plain values: built from the config (offline, `certs --html`) and, for the
/// admin page, from the running process's counters (`live`). Nothing here is secret: no key bytes, no PIN, no
/// query string, no header value.
public struct StatusModel: Sendable, Equatable {
    /// The moment the page describes (Unix seconds): "today" on every timeline.
    public var generatedAt: Int
    public var config: String
    public var warnDays: Int
    public var identities: [IdentityPanel]
    public var routes: [RouteRow]
    /// Present when [intercept] is configured.
    public var localCA: LocalCAReport?
    /// The running process's figures; nil for the offline report.
    public var live: LiveFigures?

    public init(generatedAt: Int, config: String, warnDays: Int, identities: [IdentityPanel], routes: [RouteRow],
                localCA: LocalCAReport? = nil, live: LiveFigures? = nil) {
        self.generatedAt = generatedAt
        self.config = config
        self.warnDays = warnDays
        self.identities = identities
        self.routes = routes
        self.localCA = localCA
        self.live = live
    }
}

/// One identity: its certificates (states and dates as `certs --format json` has them), where its keys live, and
/// which routes present it.
public struct IdentityPanel: Sendable, Equatable {
    public var report: IdentityReport
    /// Where each certificate's key lives, in the order of `report.certificates`.
    public var keys: [KeyLocation]
    /// Labels of the routes that name this identity.
    public var routes: [String]
    /// When each staged certificate starts being presented (Unix seconds), in the order of `report.certificates`.
    public var takeovers: [Int?]
    /// True when the identity has no valid certificate while a route names it (what holds readiness back when
    /// `[admin] ready_requires_valid_identities` is set).
    public var holdsReadinessBack: Bool {
        report.health == .noValidCertificate && !routes.isEmpty
    }

    public init(report: IdentityReport, keys: [KeyLocation], routes: [String], takeovers: [Int?]) {
        self.report = report
        self.keys = keys
        self.routes = routes
        self.takeovers = takeovers
    }

    func takeover(_ i: Int) -> Int? { i < takeovers.count ? takeovers[i] : nil }
}

/// Where a private key lives, said without any secret: a file's path, or a token's URI with its query (where a
/// `pin-value` or `pin-source` would be) and any `pin-*` attribute removed.
public struct KeyLocation: Sendable, Equatable {
    public enum Kind: String, Sendable { case file, token }
    public var kind: Kind
    public var text: String
    /// For a token key in a running proxy: whether it signs (false after a failed signature until a retry
    /// works); nil for a file key and in the offline report.
    public var available: Bool?

    public init(kind: Kind, text: String, available: Bool? = nil) {
        self.kind = kind
        self.text = text
        self.available = available
    }

    /// URI schemes of keys held by a token or a key store rather than a file.
    public static let tokenSchemes = ["pkcs11", "store", "tpm2", "engine", "provider"]

    /// `key` as configured: a path, or a `pkcs11:`/`store:` URI.
    public init(describing key: String) {
        let lower = key.lowercased()
        guard let scheme = Self.tokenSchemes.first(where: { lower.hasPrefix($0 + ":") }) else {
            self.init(kind: .file, text: key)
            return
        }
        // The query (RFC 7512 puts pin-value and pin-source there) goes whole; so does a fragment.
        var rest = key.dropFirst(scheme.count + 1)
        if let cut = rest.firstIndex(where: { $0 == "?" || $0 == "#" }) { rest = rest[..<cut] }
        // Path attributes are `;`-separated `name=value`; a PIN never belongs there, but one put there is dropped too.
        let kept = rest.split(separator: ";", omittingEmptySubsequences: false).filter { attribute in
            !attribute.lowercased().hasPrefix("pin")
        }
        self.init(kind: .token, text: String(key.prefix(scheme.count)) + ":" + kept.joined(separator: ";"))
    }
}

/// One route: as `check --format json` reports it, with the egress path its requests take.
public struct RouteRow: Sendable, Equatable {
    public var report: RouteReport
    /// How requests leave: "direct", "direct, dialling HOST:PORT", or a forward proxy's address.
    public var egress: String

    public init(report: RouteReport, egress: String) {
        self.report = report
        self.egress = egress
    }
}

/// What only a running proxy knows.
public struct LiveFigures: Sendable, Equatable {
    public var version: String
    public var commit: String
    public var startedAt: Int
    public var workers: Int
    /// Open client connections.
    public var connections: Int
    /// nil when ready, else why not (the text of `/readyz`).
    public var notReady: String?
    /// Idle pooled connections per upstream (`host:port`), across workers.
    public var pools: [PoolFigure]
    /// The most recent config loads, newest first.
    public var reloads: [ReloadEvent]
    /// Traffic per route label, over `windowSeconds`.
    public var traffic: [String: RouteTraffic]
    public var windowSeconds: Int

    public init(version: String, commit: String, startedAt: Int, workers: Int, connections: Int, notReady: String?,
                pools: [PoolFigure], reloads: [ReloadEvent], traffic: [String: RouteTraffic], windowSeconds: Int) {
        self.version = version
        self.commit = commit
        self.startedAt = startedAt
        self.workers = workers
        self.connections = connections
        self.notReady = notReady
        self.pools = pools
        self.reloads = reloads
        self.traffic = traffic
        self.windowSeconds = windowSeconds
    }
}

public struct PoolFigure: Sendable, Equatable {
    public var upstream: String
    public var idle: Int

    public init(upstream: String, idle: Int) {
        self.upstream = upstream
        self.idle = idle
    }
}

public struct ReloadEvent: Sendable, Equatable {
    public var at: Int
    /// "start", "SIGHUP", "files changed".
    public var reason: String
    public var success: Bool
    /// The first error of a failed load.
    public var error: String?

    public init(at: Int, reason: String, success: Bool, error: String? = nil) {
        self.at = at
        self.reason = reason
        self.success = success
        self.error = error
    }
}

public struct RouteTraffic: Sendable, Equatable {
    public var requests: Int
    /// Answers with a 5xx status.
    public var errors: Int
    public var lastFailure: UpstreamFailure?

    public init(requests: Int, errors: Int, lastFailure: UpstreamFailure? = nil) {
        self.requests = requests
        self.errors = errors
        self.lastFailure = lastFailure
    }
}

/// The last request of a route the proxy answered with an error of its own, and the `Proxy-Status` it sent.
public struct UpstreamFailure: Sendable, Equatable {
    public var at: Int
    public var status: Int
    public var proxyStatus: String

    public init(at: Int, status: Int, proxyStatus: String) {
        self.at = at
        self.status = status
        self.proxyStatus = proxyStatus
    }
}
