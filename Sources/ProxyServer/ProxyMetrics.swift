#if canImport(Glibc)
import Glibc
#endif
import Prometheus
import ProxyConfig
import TLS

/// The proxy's metrics, in Prometheus form. Counters and gauges are atomic, so workers update them without
/// locks; labelled series are looked up once per label set and cached by each worker (`WorkerMetrics`).
public final class ProxyMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()

    let upstreamOpened: Counter
    let upstreamReused: Counter
    let handshakesFull: Counter
    let handshakesResumed: Counter
    let activeClients: Gauge
    let activeUpstreams: Gauge
    let bytesIn: Counter
    let bytesOut: Counter
    let reloadsOK: Counter
    let reloadsFailed: Counter
    let lastReloadSuccess: Gauge
    let lastReloadTimestamp: Gauge

    /// The status page's per-route counters and last failures (`GET /` on the admin listener).
    public let statusBoard = StatusBoard()

    public init() {
        func d(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "mtls_proxy", metricName: name, unitName: unit, helpText: help)
        }
        let connections = d("upstream_connections", "total", "Upstream TLS connections by result: opened (new), reused (from the pool), failed (by reason).")
        upstreamOpened = registry.makeCounter(descriptor: connections, labels: [("result", "opened"), ("reason", "")])
        upstreamReused = registry.makeCounter(descriptor: connections, labels: [("result", "reused"), ("reason", "")])
        let handshakes = d("tls_handshakes", "total", "Completed upstream TLS handshakes, full or resumed.")
        handshakesFull = registry.makeCounter(descriptor: handshakes, labels: [("kind", "full")])
        handshakesResumed = registry.makeCounter(descriptor: handshakes, labels: [("kind", "resumed")])
        activeClients = registry.makeGauge(descriptor: d("client_connections", "active", "Open client connections."))
        activeUpstreams = registry.makeGauge(descriptor: d("upstream_connections", "active", "Open upstream connections, busy or pooled."))
        let bytes = d("bytes", "total", "Body bytes relayed: in from clients, out to clients.")
        bytesIn = registry.makeCounter(descriptor: bytes, labels: [("direction", "in")])
        bytesOut = registry.makeCounter(descriptor: bytes, labels: [("direction", "out")])
        let reloads = d("config_reloads", "total", "Config reloads by result.")
        reloadsOK = registry.makeCounter(descriptor: reloads, labels: [("result", "success")])
        reloadsFailed = registry.makeCounter(descriptor: reloads, labels: [("result", "failure")])
        let build = BuildInfo.current
        registry.makeGauge(descriptor: d("build", "info", "Always 1; the labels say which build runs (mtls-proxy --version)."),
                           labels: [("version", build.version), ("commit", build.commit), ("openssl", build.openssl),
                                    ("libevent", build.libevent)]).set(to: 1)
        lastReloadSuccess = registry.makeGauge(descriptor: d("config_last_reload", "success",
            "1 when the last config load (at start or a reload) succeeded, 0 when it failed and the previous config still serves."))
        lastReloadTimestamp = registry.makeGauge(descriptor: d("config_last_reload_timestamp", "seconds",
            "Unix time of the last config load attempt, at start or a reload, successful or not."))
        recordConfigLoad(success: true, at: currentEpochSeconds())
    }

    /// The outcome of a config load: counted (reloads only), and kept as the last one.
    func recordConfigLoad(success: Bool, at epoch: Int, isReload: Bool = false) {
        if isReload { (success ? reloadsOK : reloadsFailed).increment() }
        lastReloadSuccess.set(to: success ? 1.0 : 0.0)
        lastReloadTimestamp.set(to: Double(epoch))
    }

    static let durationBuckets: [Duration] = [
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30),
    ]

    static var durationDescriptor: MetricNameDescriptor {
        MetricNameDescriptor(namespace: "mtls_proxy", metricName: "request_duration", unitName: "seconds",
                             helpText: "Time from the request head to the end of the response, by route.")
    }

    func requestDuration(route: String) -> DurationHistogram {
        registry.makeDurationHistogram(descriptor: Self.durationDescriptor, labels: [("route", route)], buckets: Self.durationBuckets)
    }

    /// Counts an identity's switch from one valid certificate to another (a staged one took over).
    public func countCertificateSwitch(identity: String) {
        switches.counter(identity: identity, registry: registry).increment()
    }

    static var requestsDescriptor: MetricNameDescriptor {
        MetricNameDescriptor(namespace: "mtls_proxy", metricName: "requests", unitName: "total",
                             helpText: "Requests answered, by route, identity and status class (code_class: 2xx, 4xx, ...).")
    }
    static var failuresDescriptor: MetricNameDescriptor {
        MetricNameDescriptor(namespace: "mtls_proxy", metricName: "upstream_connections", unitName: "total",
                             helpText: "Upstream TLS connections by result: opened (new), reused (from the pool), failed (by reason).")
    }

    func requests(route: String, identity: String, statusClass: String) -> Counter {
        registry.makeCounter(descriptor: Self.requestsDescriptor, labels: [("route", route), ("identity", identity), ("code_class", statusClass)])
    }

    /// What the HTTP/2 upstream side counts, by route (docs/http2.md).
    enum H2Count: Int, CaseIterable {
        case connections, streams, goAways, resets, protocolErrors, pingTimeouts

        var descriptor: MetricNameDescriptor {
            func d(_ name: String, _ help: String) -> MetricNameDescriptor {
                MetricNameDescriptor(namespace: "mtls_proxy", metricName: name, unitName: "total", helpText: help)
            }
            switch self {
            case .connections: return d("h2_upstream_connections", "HTTP/2 upstream connections whose session started (the server selected h2), by route.")
            case .streams: return d("h2_upstream_streams", "Exchanges carried as streams on HTTP/2 upstream connections, by route (divided by connections: streams per connection).")
            case .goAways: return d("h2_upstream_goaways", "GOAWAY frames received from HTTP/2 upstreams, by route.")
            case .resets: return d("h2_upstream_stream_resets", "HTTP/2 upstream streams that ended with an error code (RST_STREAM sent or received), by route.")
            case .protocolErrors: return d("h2_upstream_protocol_errors", "HTTP/2 upstream connections closed for breaking the protocol or a limit (floods, oversized header lists, pushes), by route.")
            case .pingTimeouts: return d("h2_upstream_ping_timeouts", "HTTP/2 upstream connections retired because the server did not answer a PING within h2_ping_timeout, by route.")
            }
        }
    }

    func h2(_ kind: H2Count, route: String) -> Counter {
        registry.makeCounter(descriptor: kind.descriptor, labels: [("route", route)])
    }

    func upstreamFailures(reason: String) -> Counter {
        registry.makeCounter(descriptor: Self.failuresDescriptor, labels: [("result", "failed"), ("reason", reason)])
    }

    // Certificate series change with reloads; they are rebuilt from the current runtime at each scrape.
    private let certificateGauges = LockedGauges()
    private let switches = SwitchCounters()
    /// The CRLs of the runtime at the last scrape, with when they were read: rendered as text so that the
    /// series' TYPE lines are there even with no CRL (the alert rules name them).
    private let crlSnapshot = LockedValue<([CRLSummary], Int)>(([], 0))

    /// Sets the per-certificate expiry and per-identity validity series from `runtime`, replacing old ones.
    public func refreshCertificates(_ runtime: ProxyRuntime, now: Int) {
        crlSnapshot.set((runtime.crls, runtime.loadedAt))
        certificateGauges.replace(registry: registry) { make in
            let expiry = MetricNameDescriptor(namespace: "mtls_proxy", metricName: "certificate_expiry_timestamp", unitName: "seconds",
                                              helpText: "notAfter of each configured client certificate, as a Unix time.")
            let valid = MetricNameDescriptor(namespace: "mtls_proxy", metricName: "identity_certificate", unitName: "valid",
                                             helpText: "1 when the identity has a currently valid certificate, else 0.")
            let coverage = MetricNameDescriptor(namespace: "mtls_proxy", metricName: "identity_certificate_coverage_end_timestamp", unitName: "seconds",
                                                helpText: "When the identity runs out of valid certificates, counting staged successors, as a Unix time; absent while it has none.")
            let tokenAvailable = MetricNameDescriptor(namespace: "mtls_proxy", metricName: "token_key", unitName: "available",
                                                      helpText: "1 while the identity's key on a PKCS#11 token signs, 0 after it failed (the token was removed) until a retry succeeds.")
            for identity in runtime.config.identities {
                let active = runtime.activeCertificate(identity: identity.name, at: now)
                let credentials = runtime.credentials[identity.name] ?? []
                for (i, credential) in credentials.enumerated() {
                    make(expiry, [("identity", identity.name), ("serial", credential.leaf.serialHex), ("active", i == active ? "true" : "false")],
                         Double(credential.leaf.notAfter))
                }
                make(valid, [("identity", identity.name)], active == nil ? 0 : 1)
                // Token keys: whether the last signature (or attempt) worked; the key by its object URI (no PIN).
                var tokenKeys: Set<String> = []
                for credential in credentials {
                    guard let signer = credential.key.tokenSigner, tokenKeys.insert(signer.keyLabel).inserted else { continue }
                    make(tokenAvailable, [("identity", identity.name), ("key", signer.keyLabel)], signer.isAvailable ? 1 : 0)
                }
                if let end = CertificateCoverage.end(credentials.map(\.validity), at: now) {
                    make(coverage, [("identity", identity.name)], Double(end))
                }
                // Present from the start at 0, so `increase()` sees the first switch.
                _ = switches.counter(identity: identity.name, registry: registry)
            }
            if let ca = runtime.localCA {
                let caExpiry = MetricNameDescriptor(namespace: "mtls_proxy", metricName: "local_ca_expiry_timestamp", unitName: "seconds",
                                                    helpText: "notAfter of the [intercept] local CA certificate, as a Unix time.")
                make(caExpiry, [], Double(ca.certificate.notAfter))
            }
        }
    }

    /// The registry's series, then the process_* ones.
    public func render() -> String {
        registry.emitToString() + Self.trustDecisions() + Self.crlSeries(crlSnapshot.get())
            + (ProcessSample.current()?.exposition() ?? "")
    }

    /// `mtls_proxy_crl_next_update_timestamp_seconds` and `mtls_proxy_crl_last_load_timestamp_seconds`, per CRL.
    static func crlSeries(_ snapshot: ([CRLSummary], Int)) -> String {
        func label(_ s: String) -> String {
            var out = ""
            for c in s {
                switch c {
                case "\\": out += "\\\\"
                case "\"": out += "\\\""
                case "\n": out += "\\n"
                default: out.append(c)
                }
            }
            return out
        }
        var next = "# HELP mtls_proxy_crl_next_update_timestamp_seconds nextUpdate of each loaded CRL (when it goes stale), as a Unix time.\n"
        next += "# TYPE mtls_proxy_crl_next_update_timestamp_seconds gauge\n"
        var loaded = "# HELP mtls_proxy_crl_last_load_timestamp_seconds When each CRL was last read successfully (at start or reload), as a Unix time.\n"
        loaded += "# TYPE mtls_proxy_crl_last_load_timestamp_seconds gauge\n"
        for crl in snapshot.0 {
            let labels = "{issuer=\"\(label(crl.issuer))\",file=\"\(label(crl.file))\"}"
            if let n = crl.nextUpdate { next += "mtls_proxy_crl_next_update_timestamp_seconds\(labels) \(n)\n" }
            loaded += "mtls_proxy_crl_last_load_timestamp_seconds\(labels) \(snapshot.1)\n"
        }
        var fetched = "# HELP mtls_proxy_crl_last_fetch_success_timestamp_seconds When each CRL distribution point (crl_fetch) was last fetched successfully, as a Unix time.\n"
        fetched += "# TYPE mtls_proxy_crl_last_fetch_success_timestamp_seconds gauge\n"
        for e in CRLCache.shared.snapshot {
            let labels = "{issuer=\"\(label(e.issuer ?? ""))\",file=\"\(label(e.url))\"}"
            if let n = e.nextUpdate { next += "mtls_proxy_crl_next_update_timestamp_seconds\(labels) \(n)\n" }
            if let t = e.lastSuccess { fetched += "mtls_proxy_crl_last_fetch_success_timestamp_seconds\(labels) \(t)\n" }
        }
        return next + loaded + fetched
    }

    /// Counts of refused and allowed pin and revocation decisions (`TrustDecisionCounters`), since the start.
    static func trustDecisions() -> String {
        var text = "# HELP mtls_proxy_upstream_trust_decisions_total Upstream certificates refused or let through by pins and revocation checks.\n"
        text += "# TYPE mtls_proxy_upstream_trust_decisions_total counter\n"
        for d in TrustDecisionCounters.Decision.allCases {
            text += "mtls_proxy_upstream_trust_decisions_total{decision=\"\(d.label)\"} \(TrustDecisionCounters.value(d))\n"
        }
        return text
    }
}

/// A value shared between the admin thread's scrapes.
private final class LockedValue<T>: @unchecked Sendable {
    private var value: T
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init(_ value: T) {
        self.value = value
        pthread_mutex_init(lock, nil)
    }

    func set(_ v: T) {
        pthread_mutex_lock(lock)
        value = v
        pthread_mutex_unlock(lock)
    }

    func get() -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return value
    }
}

/// The certificate gauges of the last scrape, so the next one can unregister series that no longer exist.
private final class LockedGauges: @unchecked Sendable {
    private var gauges: [Gauge] = []
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init() { pthread_mutex_init(lock, nil) }

    func replace(registry: PrometheusCollectorRegistry,
                 _ build: ((MetricNameDescriptor, [(String, String)], Double) -> Void) -> Void) {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        for gauge in gauges { registry.unregisterGauge(gauge) }
        gauges.removeAll()
        build { descriptor, labels, value in
            let gauge = registry.makeGauge(descriptor: descriptor, labels: labels)
            gauge.set(value)
            gauges.append(gauge)
        }
    }
}

/// One counter per identity of certificate switches, kept across scrapes and reloads.
private final class SwitchCounters: @unchecked Sendable {
    private var counters: [String: Counter] = [:]
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init() { pthread_mutex_init(lock, nil) }

    func counter(identity: String, registry: PrometheusCollectorRegistry) -> Counter {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        if let counter = counters[identity] { return counter }
        let descriptor = MetricNameDescriptor(namespace: "mtls_proxy", metricName: "identity_certificate_switches", unitName: "total",
                                              helpText: "Times the identity's presented certificate changed to another valid one (a staged certificate took over).")
        let counter = registry.makeCounter(descriptor: descriptor, labels: [("identity", identity)])
        counters[identity] = counter
        return counter
    }
}

/// A worker's cache of labelled series, so the registry's lock is taken once per label set, not per request.
/// Requests are looked up by their label values as given (no label string is built per request): the series of
/// the previous request is tried first, since a worker mostly serves the same route and identity again; then a
/// table keyed by the values themselves.
final class WorkerMetrics {
    let shared: ProxyMetrics
    private var requests: [RequestSeries: (counter: Counter, tally: StatusBoard.RouteTally)] = [:]
    private var failures: [String: Counter] = [:]
    private var durations: [String: DurationHistogram] = [:]
    private var lastRequest: (series: RequestSeries, counter: Counter, tally: StatusBoard.RouteTally)?
    private var lastDuration: (route: String, histogram: DurationHistogram)?

    /// The labels of one `mtls_proxy_requests_total` series: the status class as its digit (2 for 2xx).
    struct RequestSeries: Hashable {
        var route: String
        var identity: String?
        var statusClass: Int
    }

    init(_ shared: ProxyMetrics) { self.shared = shared }

    func countRequest(route: String, identity: String?, status: Int) {
        let series = RequestSeries(route: route, identity: identity, statusClass: status / 100)
        if let last = lastRequest, last.series == series {
            last.counter.increment()
            last.tally.count(status: status)
            return
        }
        let known: (counter: Counter, tally: StatusBoard.RouteTally)
        if let cached = requests[series] {
            known = cached
        } else {
            known = (shared.requests(route: route, identity: identity ?? "", statusClass: "\(series.statusClass)xx"),
                     shared.statusBoard.tally(route: route))
            requests[series] = known
        }
        lastRequest = (series, known.counter, known.tally)
        known.counter.increment()
        known.tally.count(status: status)
    }

    func observeDuration(route: String, nanoseconds: Int64) {
        if let last = lastDuration, last.route == route {
            last.histogram.recordNanoseconds(nanoseconds)
            return
        }
        let histogram: DurationHistogram
        if let known = durations[route] {
            histogram = known
        } else {
            histogram = shared.requestDuration(route: route)
            durations[route] = histogram
        }
        lastDuration = (route, histogram)
        histogram.recordNanoseconds(nanoseconds)
    }

    /// One HTTP/2 event of a route's upstream connections (the series made once per worker, route and kind).
    func countH2(_ kind: ProxyMetrics.H2Count, route: String) {
        let key = H2Series(kind: kind, route: route)
        if let counter = h2Counters[key] {
            counter.increment()
        } else {
            let counter = shared.h2(kind, route: route)
            h2Counters[key] = counter
            counter.increment()
        }
    }

    private struct H2Series: Hashable {
        var kind: ProxyMetrics.H2Count
        var route: String
    }
    private var h2Counters: [H2Series: Counter] = [:]

    func countFailure(_ reason: String) {
        if let counter = failures[reason] {
            counter.increment()
        } else {
            let counter = shared.upstreamFailures(reason: reason)
            failures[reason] = counter
            counter.increment()
        }
    }
}
