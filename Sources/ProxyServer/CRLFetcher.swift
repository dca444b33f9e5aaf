import CEventTLS
import ProxyConfig
import TLS
#if canImport(Glibc)
import Glibc
#endif

/// Fetches the CRLs that verification wants (`CRLCache`) over HTTP or HTTPS (TLS verified against the system
/// trust store, see `DistributionPointTLS`), off the request path: a URL is fetched when first wanted, then again
/// ahead of its CRL's nextUpdate (or soon after a failure). A thread of its own looks for due URLs every 200 ms and
/// fetches each on a thread of the fetch's own, at most `maxConcurrentFetches` at once and one per URL, so that a
/// distribution point that is slow or hangs (until response_timeout, again at every retry) holds up no other
/// CRL. The same SSRF guard and timeouts as requests: the address is refused unless public, or `[upstream]
/// allow_private` allows it; `connect_timeout` for the connection, `response_timeout` for the whole answer, and
/// at most 10 MiB. Started when some route sets `crl_fetch = true`.
final class CRLFetcher: @unchecked Sendable {
    static let shared = CRLFetcher()

    struct Settings: Equatable {
        var allowPrivate = false
        var connectMillis = 5000
        var responseMillis = 60000
        /// Seconds before a failed or stale URL is tried again.
        var retryAfter = 30
        /// Some route of the current config fetches CRLs (a reload may turn it off: nothing is fetched then).
        var enabled = false
    }

    private var settings = Settings()
    private var started = false
    /// The URLs being fetched now (under `lock`).
    private var inFlight: Set<String> = []
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    static let maxBytes = 10 * 1024 * 1024
    /// Fetches under way at once: each may hold up to `maxBytes` while it reads.
    static let maxConcurrentFetches = 16

    private init() { pthread_mutex_init(lock, nil) }

    /// Takes the settings of `config` and starts the thread the first time a route fetches CRLs.
    func configure(_ config: ProxyConfiguration) {
        let fetching = Self.fetches(config)
        let s = Settings(allowPrivate: config.upstream.allowPrivate, connectMillis: config.upstream.timeouts.connect.milliseconds,
                         responseMillis: config.upstream.timeouts.response.milliseconds, enabled: fetching)
        pthread_mutex_lock(lock)
        let wasEnabled = settings.enabled
        settings = s
        let start = fetching && !started
        if start { started = true }
        pthread_mutex_unlock(lock)
        // Off: nothing fetched before is kept (not used, not shown in the metrics); on again, fetched anew.
        if wasEnabled && !fetching { CRLCache.shared.reset() }
        guard start else { return }
        var thread = pthread_t()
        let me = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { arg in
            Unmanaged<CRLFetcher>.fromOpaque(arg!).takeRetainedValue().loop()
            return nil
        }, me)
        pthread_detach(thread)
    }

    /// Whether `config` fetches CRLs: `[upstream]` or some route sets `crl_fetch` with revocation on (with it
    /// off, nothing looks a CRL up).
    static func fetches(_ config: ProxyConfiguration) -> Bool {
        let uses = { (t: TrustSettings) in t.crlFetch && t.revocation != .off }
        return uses(config.upstream.trust) || config.routes.contains { uses($0.trust) }
    }

    private func current() -> Settings {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return settings
    }

    private func loop() {
        while true {
            let s = current()
            let now = currentEpochSeconds()
            for url in s.enabled ? CRLCache.shared.due(at: now) : [] where claim(url) {
                startFetch(url, settings: s)
            }
            usleep(200_000)
        }
    }

    /// Marks `url` as being fetched; false when it already is, or when `maxConcurrentFetches` are under way (it
    /// stays due, and is taken at a later look).
    private func claim(_ url: String) -> Bool {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        guard !inFlight.contains(url), inFlight.count < Self.maxConcurrentFetches else { return false }
        inFlight.insert(url)
        return true
    }

    private func release(_ url: String) {
        pthread_mutex_lock(lock)
        inFlight.remove(url)
        pthread_mutex_unlock(lock)
    }

    /// One fetch, on a thread of its own (it blocks on DNS, the connection and the answer); the result goes to
    /// the cache, then the URL is released.
    private final class Fetch {
        let fetcher: CRLFetcher, url: String, settings: Settings
        init(_ fetcher: CRLFetcher, _ url: String, _ settings: Settings) {
            self.fetcher = fetcher
            self.url = url
            self.settings = settings
        }

        func run() {
            switch CRLFetcher.fetch(url, settings: settings) {
            case .success(let body): CRLCache.shared.store(body, from: url, at: currentEpochSeconds(), retryAfter: settings.retryAfter)
            case .failure(let error): CRLCache.shared.failed(url, error.text, at: currentEpochSeconds(), retryAfter: settings.retryAfter)
            }
            fetcher.release(url)
        }
    }

    private func startFetch(_ url: String, settings: Settings) {
        let job = Unmanaged.passRetained(Fetch(self, url, settings)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            Unmanaged<Fetch>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, job)
        guard rc == 0 else {
            // No thread now: the URL stays due and is tried at the next look.
            Unmanaged<Fetch>.fromOpaque(job).release()
            release(url)
            return
        }
        pthread_detach(thread)
    }

    struct FetchError: Error { var text: String }

    /// `http://host[:port]/path` → (host, port, path); nil for anything else (another scheme, userinfo, no host).
    static func parse(_ url: String) -> (host: String, port: Int, path: String)? {
        parseLocation(url).flatMap { $0.tls ? nil : ($0.host, $0.port, $0.path) }
    }

    /// `http://` or `https://host[:port]/path` → where to fetch it; nil for anything else.
    static func parseLocation(_ url: String) -> (tls: Bool, host: String, port: Int, path: String)? {
        let lower = url.lowercased()
        let tls = lower.hasPrefix("https://")
        guard tls || lower.hasPrefix("http://") else { return nil }
        let rest = url.dropFirst(tls ? 8 : 7)
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        var path = String(rest[authorityEnd...])
        if let hash = path.firstIndex(of: "#") { path = String(path[..<hash]) }
        if path.isEmpty || path.first == "?" { path = "/" + path }
        guard !authority.isEmpty, !authority.contains("@") else { return nil }
        var host = String(authority), port = tls ? 443 : 80
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.first == ":", let p = Int(after.dropFirst()), (1...65535).contains(p) else { return nil }
                port = p
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let p = Int(authority[authority.index(after: colon)...]), (1...65535).contains(p) else { return nil }
            port = p
        }
        guard !host.isEmpty, path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return nil }
        return (tls, host, port, path)
    }

    static func fetch(_ url: String, settings: Settings) -> Result<[UInt8], FetchError> {
        guard let (tls, host, port, path) = parseLocation(url) else {
            return .failure(FetchError(text: "not an http:// or https:// URL the proxy fetches"))
        }
        // Resolve (blocking: this thread only), then the guard on every address before any connection.
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else { return .failure(FetchError(text: "cannot resolve \(host): \(String(cString: gai_strerror(rc)))")) }
        defer { freeaddrinfo(result) }
        var node: UnsafeMutablePointer<addrinfo>? = first
        var lastError = "no address for \(host)"
        while let n = node {
            node = n.pointee.ai_next
            guard let sa = n.pointee.ai_addr, let ip = address(of: sa, family: n.pointee.ai_family) else { continue }
            if !settings.allowPrivate, let reason = AddressPolicy.nonPublicReason(ip) {
                lastError = "\(host) resolves to \(ip), \(reason) ([upstream] allow_private is off)"
                continue
            }
            switch get(sa, length: n.pointee.ai_addrlen, family: n.pointee.ai_family, tls: tls, host: host, port: port, path: path, settings: settings) {
            case .success(let body): return .success(body)
            case .failure(let e): lastError = e.text
            }
        }
        return .failure(FetchError(text: lastError))
    }

    private static func address(of sa: UnsafeMutablePointer<sockaddr>, family: Int32) -> IPAddress? {
        if family == AF_INET {
            return sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in IPAddress(bytes: withUnsafeBytes(of: p.pointee.sin_addr) { Array($0) }) }
        }
        if family == AF_INET6 {
            return sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in IPAddress(bytes: withUnsafeBytes(of: p.pointee.sin6_addr) { Array($0) }) }
        }
        return nil
    }

    private static func monotonicMillis() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
    }

    /// One HTTP/1.0 GET (no chunked answers), over TLS for `tls`, with a deadline for the connection and one for
    /// the whole answer (TLS handshake included).
    private static func get(_ sa: UnsafeMutablePointer<sockaddr>, length: socklen_t, family: Int32, tls: Bool, host: String, port: Int,
                            path: String, settings: Settings) -> Result<[UInt8], FetchError> {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(FetchError(text: "socket: \(String(cString: strerror(errno)))")) }
        defer { close(fd) }
        func wait(_ events: Int16, until deadline: Int) -> Bool {
            var p = pollfd(fd: fd, events: events, revents: 0)
            let left = deadline - monotonicMillis()
            return left > 0 && poll(&p, 1, Int32(left)) == 1
        }
        let where_ = "\(host):\(port)"
        let connectDeadline = monotonicMillis() + settings.connectMillis
        if connect(fd, sa, length) != 0 {
            guard errno == EINPROGRESS, wait(Int16(POLLOUT), until: connectDeadline) else {
                return .failure(FetchError(text: errno == EINPROGRESS ? "no connection to \(where_) within connect_timeout" : "cannot connect to \(where_): \(String(cString: strerror(errno)))"))
            }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
            guard err == 0 else { return .failure(FetchError(text: "cannot connect to \(where_): \(String(cString: strerror(err)))")) }
        }
        let deadline = monotonicMillis() + settings.responseMillis
        let hostHeader = host.contains(":") ? "[\(host)]" : host
        var request = Array("GET \(path) HTTP/1.0\r\nHost: \(hostHeader)\(port == (tls ? 443 : 80) ? "" : ":\(port)")\r\nUser-Agent: mtls-proxy\r\nAccept: application/pkix-crl, */*\r\nConnection: close\r\n\r\n".utf8)
        if tls {
            switch DistributionPointTLS.exchange(fd: fd, host: host, request: request, deadline: deadline, maxBytes: maxBytes + 65536) {
            case .success(let response): return parseResponse(response, from: where_)
            case .failure(let e): return .failure(FetchError(text: e.text))
            }
        }
        while !request.isEmpty {
            guard wait(Int16(POLLOUT), until: deadline) else { return .failure(FetchError(text: "\(where_) did not take the request within response_timeout")) }
            let n = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return .failure(FetchError(text: "sending to \(where_): \(String(cString: strerror(errno)))")) }
            request.removeFirst(n)
        }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            guard wait(Int16(POLLIN), until: deadline) else { return .failure(FetchError(text: "\(where_) did not answer within response_timeout")) }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            guard n > 0 else {
                if errno == EAGAIN || errno == EINTR { continue }
                return .failure(FetchError(text: "reading from \(where_): \(String(cString: strerror(errno)))"))
            }
            response += chunk[0..<n]
            guard response.count <= maxBytes + 65536 else { return .failure(FetchError(text: "the answer from \(where_) is larger than 10 MiB")) }
        }
        return parseResponse(response, from: where_)
    }

    /// The body of a `200` answer (Content-Length respected when present); an error naming the status otherwise.
    static func parseResponse(_ response: [UInt8], from where_: String) -> Result<[UInt8], FetchError> {
        // (Byte by byte, no copy per position: a hostile server may send 10 MiB with no end of head.)
        guard let end = (0..<max(0, response.count - 3)).first(where: {
            response[$0] == 13 && response[$0 + 1] == 10 && response[$0 + 2] == 13 && response[$0 + 3] == 10
        }) else {
            return .failure(FetchError(text: "\(where_) sent no complete HTTP answer"))
        }
        let head = String(decoding: response[..<end], as: UTF8.self)
        let lines = head.split(separator: "\r\n", omittingEmptySubsequences: false)
        let status = lines.first.map { $0.split(separator: " ") } ?? []
        guard status.count >= 2, status[0].hasPrefix("HTTP/1.") else { return .failure(FetchError(text: "\(where_) did not answer HTTP")) }
        guard status[1] == "200" else { return .failure(FetchError(text: "HTTP \(status[1]) from \(where_)")) }
        var body = Array(response[(end + 4)...])
        for line in lines.dropFirst() {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "content-length", let n = Int(parts[1].trimmingSpaces), n >= 0 {
                guard body.count >= n else { return .failure(FetchError(text: "the answer from \(where_) ended after \(body.count) of \(n) bytes")) }
                body = Array(body[..<n])
            }
        }
        guard !body.isEmpty else { return .failure(FetchError(text: "empty answer from \(where_)")) }
        return .success(body)
    }
}

private extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return s
    }
}
