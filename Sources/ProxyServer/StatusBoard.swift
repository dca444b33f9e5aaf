import CEventTLS
import StatusPage
#if canImport(Glibc)
import Glibc
#endif

/// What the status page knows of the traffic, kept so that it costs the data path no more than an increment:
/// per route, two counters (requests, 5xx answers) that workers add to atomically; the last failure the proxy
/// answered itself, per route (written only when a request fails); idle pooled connections per upstream,
/// published by each worker once a second; and a ring of per-minute snapshots of the counters, taken by the
/// main thread's once-a-second watch, so that the page can say "the last 15 minutes".
public final class StatusBoard: @unchecked Sendable {
    /// One route's counters; a worker keeps a reference next to its Prometheus series, so counting is two
    /// relaxed atomic adds at most (requests, and errors for a 5xx).
    final class RouteTally: @unchecked Sendable {
        private let values = UnsafeMutablePointer<Int>.allocate(capacity: 2)
        init() { values.initialize(repeating: 0, count: 2) }
        deinit { values.deallocate() }

        func count(status: Int) {
            _ = mtls_atomic_add(values, 1)
            if status >= 500 { _ = mtls_atomic_add(values + 1, 1) }
        }

        var requests: Int { mtls_atomic_load(values) }
        var errors: Int { mtls_atomic_load(values + 1) }
    }

    /// How many per-minute snapshots are kept: the page shows traffic over up to this many minutes.
    static let minutesKept = 15

    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var tallies: [String: RouteTally] = [:]
    private var failures: [String: UpstreamFailure] = [:]
    private var pools: [Int: [String: Int]] = [:]
    /// (time, requests and errors per route), oldest first; main thread only.
    private var snapshots: [(at: Int, counts: [String: (requests: Int, errors: Int)])] = []

    init() { pthread_mutex_init(lock, nil) }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return body()
    }

    /// The counters of `route` (a route's label; "-" for requests no route matched), made on first use.
    func tally(route: String) -> RouteTally {
        locked {
            if let tally = tallies[route] { return tally }
            let tally = RouteTally()
            tallies[route] = tally
            return tally
        }
    }

    /// A request of `route` the proxy answered with an error of its own, and the Proxy-Status it sent.
    func recordFailure(route: String, status: Int, proxyStatus: String, at: Int) {
        let failure = UpstreamFailure(at: at, status: status, proxyStatus: proxyStatus)
        locked { failures[route] = failure }
    }

    /// A worker's idle pooled connections per upstream, replacing what it said before.
    func publishPool(worker: Int, idle: [String: Int]) {
        locked { pools[worker] = idle }
    }

    func forgetPool(worker: Int) {
        locked { pools[worker] = nil }
    }

    /// Idle pooled connections per upstream, across workers, sorted by upstream.
    func poolFigures() -> [PoolFigure] {
        let all = locked { pools }
        var total: [String: Int] = [:]
        for (_, idle) in all { for (upstream, n) in idle { total[upstream, default: 0] += n } }
        return total.filter { $0.value > 0 }.sorted { $0.key < $1.key }.map { PoolFigure(upstream: $0.key, idle: $0.value) }
    }

    private func counts() -> [String: (requests: Int, errors: Int)] {
        locked { tallies.mapValues { (requests: $0.requests, errors: $0.errors) } }
    }

    /// Takes a snapshot when the last one is a minute old (or there is none). Main thread, once a second.
    func tick(now: Int) {
        if let last = snapshots.last, now - last.at < 60 { return }
        snapshots.append((now, counts()))
        if snapshots.count > Self.minutesKept { snapshots.removeFirst(snapshots.count - Self.minutesKept) }
    }

    /// Requests and errors per route since the oldest snapshot (up to 15 minutes ago), with each route's last
    /// failure; and the window's length in seconds. Main thread.
    func traffic(now: Int) -> (routes: [String: RouteTraffic], windowSeconds: Int) {
        let current = counts()
        let base = snapshots.first
        let lastFailures = locked { failures }
        var routes: [String: RouteTraffic] = [:]
        for (route, value) in current {
            let before = base?.counts[route] ?? (0, 0)
            routes[route] = RouteTraffic(requests: value.requests - before.requests, errors: value.errors - before.errors,
                                         lastFailure: lastFailures[route])
        }
        for (route, failure) in lastFailures where routes[route] == nil {
            routes[route] = RouteTraffic(requests: 0, errors: 0, lastFailure: failure)
        }
        return (routes, now - (base?.at ?? now))
    }
}
