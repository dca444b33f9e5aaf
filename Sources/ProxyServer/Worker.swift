import CEventTLS
import HTTP1
import Logging
import ProxyConfig
import TLS
#if canImport(Glibc)
import Glibc
#endif

/// One event-loop thread: its own `event_base`, DNS resolver, listening socket (SO_REUSEPORT, so every worker
/// accepts on the same address), client connections and upstream pool. Workers share nothing mutable; the
/// `ProxyRuntime` they read is immutable.
final class Worker: @unchecked Sendable {
    /// Bytes a bufferevent reads ahead before it stops reading.
    static let readHighWatermark = 256 * 1024
    /// Relaying pauses the source once the destination holds this many unsent bytes...
    static let writeHighWatermark = 256 * 1024
    /// ...and resumes when it has drained to this many.
    static let writeLowWatermark = 64 * 1024

    let id: Int
    /// Read and replaced on this worker's thread only; a reload hands the new one over through `pendingRuntime`.
    private(set) var runtime: ProxyRuntime
    /// This worker's access log: lines buffered and written in batches (see `AccessLogWriter`).
    let accessLog: AccessLogWriter
    private(set) var authenticator: ProxyAuthenticator?
    let metrics: WorkerMetrics
    /// Whether the last pool sizes published to the status board were non-zero.
    private var publishedIdle = false
    let health: WorkerHealth
    private let pendingLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var pendingRuntime: (ProxyRuntime, AccessLog)?
    private var listeners: [ListenerHandle] = []
    let logger: Logger
    let base: OpaquePointer
    let dns: OpaquePointer
    /// Other threads wake this loop through `wakeFD` (an eventfd), never by touching its event base: the base is
    /// made without locks (`EVENT_BASE_FLAG_NOLOCK`), which saves every event operation a mutex pair.
    private let wakeFD: Int32
    private var wakeEvent: OpaquePointer?
    /// Asked for by other threads, under `pendingLock`, and carried out on this loop when it wakes.
    private var stopRequested = false
    private var breakRequested = false
    private var tickEvent: OpaquePointer?
    private var drainTimer: OpaquePointer?
    let pool = UpstreamPool()
    /// Exchange storage for this worker's connections while they have a request in flight.
    let exchanges = ExchangeStore()
    /// Writes what the connections queued, at the end of each loop iteration.
    private(set) var flusher: StreamFlusher!
    private var clients: [ObjectIdentifier: ClientConnection] = [:]
    /// Open HTTP/1.1 upstream connections, each until it closes.
    let upstreams = UpstreamRegistry()
    /// HTTP/2 upstream connections, each carrying many exchanges.
    private(set) lazy var h2Pool = H2Pool(worker: self)
    /// Connections that closed during this loop turn, kept until its end. A connection usually closes inside one
    /// of its own callbacks, and neither its streams (`SocketStream.owner`) nor the methods below the callback
    /// hold a reference to it (`unowned(unsafe)`, for speed): released from the registry there, it would be freed
    /// while its own code still runs. Released by `releaseEvent`, activated when the first one is kept.
    private var closedThisTurn: [AnyObject] = []
    private var releaseEvent: OpaquePointer?
    private(set) var draining = false
    private var thread: pthread_t?

    let connections: ConnectionCounter

    /// Where bcrypt runs (off the loops) and the per-address failure limit, shared by every worker.
    private let hashing: PasswordHashing
    private let authLimiter: AuthFailureLimiter
    /// Work handed to this loop from other threads (`post`), guarded by `pendingLock`.
    private var mailbox: [() -> Void] = []

    init(id: Int, runtime: ProxyRuntime, accessLog: AccessLog, metrics: ProxyMetrics, health: WorkerHealth,
         connections: ConnectionCounter, logger: Logger,
         hashing: PasswordHashing = PasswordHashing(), authLimiter: AuthFailureLimiter = AuthFailureLimiter()) throws {
        self.id = id
        self.connections = connections
        self.runtime = runtime
        self.hashing = hashing
        self.authLimiter = authLimiter
        self.authenticator = runtime.proxyUsers.map { ProxyAuthenticator(users: $0, hashing: hashing, limiter: authLimiter) }
        self.metrics = WorkerMetrics(metrics)
        self.health = health
        self.logger = logger
        guard let config = event_config_new() else { throw ServerError.eventLoop("event_config_new failed") }
        defer { event_config_free(config) }
        event_config_set_flag(config, Int32(EVENT_BASE_FLAG_NOLOCK.rawValue))
        guard let base = event_base_new_with_config(config) else { throw ServerError.eventLoop("event_base_new failed") }
        self.base = base
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wakeFD >= 0 else { throw ServerError.eventLoop("eventfd failed: \(String(cString: strerror(errno)))") }
        self.accessLog = AccessLogWriter(log: accessLog, base: base)
        self.flusher = StreamFlusher(base: base)
        // Nameservers from the config or /etc/resolv.conf, names from /etc/hosts. A machine without resolv.conf
        // still gets a resolver that answers from /etc/hosts and numeric names.
        let nameservers = runtime.config.upstream.nameservers
        if !nameservers.isEmpty {
            guard let dns = evdns_base_new(base, 0) else { throw ServerError.eventLoop("evdns_base_new failed") }
            evdns_base_load_hosts(dns, nil)
            if let bad = Self.addNameservers(dns, nameservers) { throw ServerError.eventLoop("cannot use nameserver \(bad)") }
            evdns_base_set_option(dns, "timeout:", "2")
            evdns_base_set_option(dns, "attempts:", "2")
            self.dns = dns
        } else if let dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS) {
            self.dns = dns
        } else {
            guard let dns = evdns_base_new(base, 0) else { throw ServerError.eventLoop("evdns_base_new failed") }
            evdns_base_load_hosts(dns, nil)
            self.dns = dns
        }
        let me = Unmanaged.passUnretained(self).toOpaque()
        pthread_mutex_init(pendingLock, nil)
        wakeEvent = event_new(base, wakeFD, Int16(EV_READ | EV_PERSIST), workerWakeCallback, me)
        event_add(wakeEvent, nil)
        tickEvent = event_new(base, -1, Int16(EV_PERSIST), workerTickCallback, me)
        releaseEvent = event_new(base, -1, 0, workerReleaseCallback, me)
        var second = timeval(tv_sec: 1, tv_usec: 0)
        event_add(tickEvent, &second)
    }

    /// Adds `servers` to `dns`; returns the first it refuses, nil when all are in.
    private static func addNameservers(_ dns: OpaquePointer, _ servers: [HostPort]) -> HostPort? {
        servers.first { evdns_base_nameserver_ip_add(dns, $0.description) != 0 }
    }

    /// A reload that changes `[upstream] nameservers` swaps them on this worker's resolver: lookups in flight
    /// are sent again to the new servers (evdns suspends and resumes them). An empty list means
    /// /etc/resolv.conf again.
    private func applyNameservers(old: [HostPort], new: [HostPort]) {
        guard old != new else { return }
        evdns_base_clear_nameservers_and_suspend(dns)
        if new.isEmpty {
            if evdns_base_resolv_conf_parse(dns, DNS_OPTION_NAMESERVERS, "/etc/resolv.conf") != 0 {
                logger.warning("reload: no nameservers in /etc/resolv.conf; names resolve from /etc/hosts only")
            }
        } else if let bad = Self.addNameservers(dns, new) {
            logger.error("reload: cannot use nameserver \(bad); the others are in use")
        }
        evdns_base_set_option(dns, "timeout:", "2")
        evdns_base_set_option(dns, "attempts:", "2")
        evdns_base_resume(dns)
    }

    /// Once a second: pooled connections that present a certificate the identity no longer uses (its
    /// successor took over at its notBefore, or it expired) are closed, never reused.
    fileprivate func tick() {
        health.beat(worker: id)
        // The status page's pool sizes, once a second (nothing when the pool is and was empty).
        if pool.idleCount > 0 || publishedIdle {
            metrics.shared.statusBoard.publishPool(worker: id, idle: pool.idleByUpstream)
            publishedIdle = pool.idleCount > 0
        }
        let active = runtime.activeCredentials()
        pool.retire { connection in
            guard let identity = connection.context.identityName, let credential = connection.context.credential else { return false }
            guard let current = active[identity] ?? nil else { return true }
            return current !== credential
        }
    }

    deinit {
        // Checked in debug builds: connections hold their worker unowned(unsafe), so none may outlive it.
        assert(clients.isEmpty && upstreams.isEmpty, "a worker went before its connections")
        for handle in listeners { handle.free() }
        if let wakeEvent { event_free(wakeEvent) }
        close(wakeFD)
        if let tickEvent { event_free(tickEvent) }
        if let releaseEvent { event_free(releaseEvent) }
        closedThisTurn.removeAll()
        pthread_mutex_destroy(pendingLock)
        pendingLock.deallocate()
        if let drainTimer { event_free(drainTimer) }
        accessLog.detach()
        flusher.free()
        evdns_base_free(dns, 0)
        event_base_free(base)
    }

    /// Binds a listening socket, or accepts on a copy of `inherited` (a socket a supervisor handed over, already
    /// listening); returns the port (useful with port 0).
    func bind(_ address: HostPort, kind: ListenerKind, allowClients: [CIDR], inherited: Int32? = nil) throws -> Int {
        guard let sockaddr = SocketAddress(address) else {
            throw ServerError.bind(address.description, "not a numeric address", role: kind.settingName)
        }
        let flags = UInt32(LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT | LEV_OPT_CLOSE_ON_EXEC)
        let handle = ListenerHandle(worker: self, kind: kind, allowClients: allowClients)
        let ctx = Unmanaged.passUnretained(handle).toOpaque()
        let listener: OpaquePointer?
        if let inherited {
            let fd = fcntl(inherited, F_DUPFD_CLOEXEC, 3)
            guard fd >= 0 else { throw ServerError.bind(address.description, errno: mtls_errno(), role: kind.settingName) }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            listener = evconnlistener_new(base, workerAcceptCallback, ctx, UInt32(LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC), -1, fd)
            if listener == nil { close(fd) }
        } else {
            listener = sockaddr.withSockaddr { sa, len in
                evconnlistener_new_bind(base, workerAcceptCallback, ctx, flags, 1024, sa, Int32(len))
            }
        }
        guard let listener else {
            throw ServerError.bind(address.description, errno: mtls_errno(), role: kind.settingName)
        }
        evconnlistener_set_error_cb(listener, workerAcceptErrorCallback)
        handle.listener = listener
        listeners.append(handle)
        return SocketAddress.localPort(of: evconnlistener_get_fd(listener))
    }

    func start() {
        let retained = Unmanaged.passRetained(self).toOpaque()
        var tid = pthread_t()
        pthread_create(&tid, nil, { arg in
            let worker = Unmanaged<Worker>.fromOpaque(arg!).takeRetainedValue()
            worker.run()
            return nil
        }, retained)
        thread = tid
    }

    func join() {
        if let thread { pthread_join(thread, nil) }
    }

    private func run() {
        health.beat(worker: id)
        event_base_dispatch(base)
        // The loop has ended: free what is left, on this thread.
        for client in Array(clients.values) { client.abort() }
        pool.closeAll()
        h2Pool.closeAll()
        for upstream in upstreams.all { upstream.close() }
        closedThisTurn.removeAll()
        // Every line of every request, the last ones included, is written before the worker ends.
        accessLog.detach()
        health.finished(worker: id)
    }

    /// Safe from any thread: new requests use `runtime` from now on; requests in flight finish on the old one.
    func replaceRuntime(_ runtime: ProxyRuntime, accessLog: AccessLog) {
        pthread_mutex_lock(pendingLock)
        pendingRuntime = (runtime, accessLog)
        pthread_mutex_unlock(pendingLock)
        wake()
    }

    fileprivate func takePendingRuntime() {
        pthread_mutex_lock(pendingLock)
        let next = pendingRuntime
        pendingRuntime = nil
        pthread_mutex_unlock(pendingLock)
        guard let next else { return }
        applyNameservers(old: runtime.config.upstream.nameservers, new: next.0.config.upstream.nameservers)
        runtime = next.0
        // Lines buffered so far go to the log they were written for (SIGHUP flushes them either way).
        accessLog.replace(with: next.1)
        authenticator = runtime.proxyUsers.map { ProxyAuthenticator(users: $0, hashing: hashing, limiter: authLimiter) }
        interceptionContexts.removeAll()
        // Idle connections were made under the old certificates and trust settings: retire them all.
        pool.closeAll()
    }

    /// Safe from any thread: runs `work` on this worker's loop thread soon (the loop is woken).
    func post(_ work: @escaping () -> Void) {
        pthread_mutex_lock(pendingLock)
        mailbox.append(work)
        pthread_mutex_unlock(pendingLock)
        wake()
    }

    fileprivate func deliverMail() {
        pthread_mutex_lock(pendingLock)
        let work = mailbox
        mailbox.removeAll()
        pthread_mutex_unlock(pendingLock)
        for item in work { item() }
    }

    /// Safe from any thread: stop accepting, finish what is in flight (up to `timeout`), then end the loop.
    func requestStop() {
        pthread_mutex_lock(pendingLock)
        stopRequested = true
        pthread_mutex_unlock(pendingLock)
        wake()
    }

    private var interceptionContexts: [String: InterceptionContext] = [:]

    /// The server-side TLS context for intercepting a tunnel to `host`, minted from the local CA once and kept
    /// until an hour before its leaf expires (or the runtime changes).
    func interceptionContext(for host: String) throws -> InterceptionContext? {
        guard let ca = runtime.localCA, let settings = runtime.config.intercept else { return nil }
        let key = "\(runtime.generation)/\(host)"
        if let cached = interceptionContexts[key], cached.notAfter - currentEpochSeconds() > 3600 { return cached }
        if interceptionContexts.count > 10_000 { interceptionContexts.removeAll() }
        let ctx = try InterceptionContext(ca: ca, host: host, validitySeconds: settings.leafValidity.milliseconds / 1000)
        interceptionContexts[key] = ctx
        return ctx
    }

    /// Safe from any thread: end the loop now, whatever is in flight.
    func forceStop() {
        pthread_mutex_lock(pendingLock)
        breakRequested = true
        pthread_mutex_unlock(pendingLock)
        wake()
    }

    /// Wakes this worker's loop from any thread.
    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// On this loop: what other threads asked for since the last wake.
    fileprivate func woken() {
        var count: UInt64 = 0
        _ = read(wakeFD, &count, 8)
        pthread_mutex_lock(pendingLock)
        let stop = stopRequested, breakNow = breakRequested
        pthread_mutex_unlock(pendingLock)
        if breakNow {
            event_base_loopbreak(base)
            return
        }
        takePendingRuntime()
        deliverMail()
        if stop { beginDrain() }
    }

    fileprivate func beginDrain() {
        guard !draining else { return }
        draining = true
        accessLog.flush()
        for handle in listeners { handle.free() }
        listeners.removeAll()
        pool.closeAll()
        // The tick goes on: it is the heartbeat /healthz reads, and a draining worker is alive.
        for client in Array(clients.values) { client.drain() }
        let me = Unmanaged.passUnretained(self).toOpaque()
        drainTimer = mtls_evtimer_new(base, workerDrainTimeoutCallback, me)
        _ = mtls_evtimer_add_ms(drainTimer, runtime.config.proxy.drainTimeout.milliseconds)
        exitIfDrained()
    }

    private func exitIfDrained() {
        if draining && clients.isEmpty { event_base_loopexit(base, nil) }
    }

    fileprivate func accept(fd: Int32, address: UnsafeMutablePointer<sockaddr>?, handle: ListenerHandle) {
        var peerText = "?"
        // A reload may have changed what this listener serves and who may connect: read them from the runtime.
        let (kind, allowClients) = handle.current(in: runtime)
        if let address {
            let peer = SocketAddress.describe(address)
            peerText = peer.text
            let allowed: Bool
            if let ip = peer.ip {
                allowed = ip.isLoopback || allowClients.contains { $0.contains(ip) }
            } else {
                allowed = false
            }
            guard allowed else {
                logger.warning("refused a connection from \(peer.text): not in allow_clients")
                close(fd)
                return
            }
        }
        if connections.increment() > runtime.config.proxy.maxConnections {
            connections.decrement()
            let refusal = ProxyErrorResponse(status: 503, errorType: .connectionLimitReached,
                                             details: "the proxy holds its limit of \(runtime.config.proxy.maxConnections) connections",
                                             advice: "Retry later, or raise [proxy] max_connections.")
            let bytes = refusal.serialize(closeConnection: true, extraHeaders: [("Retry-After", "1")])
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            shutdown(fd, Int32(SHUT_WR))
            close(fd)
            metrics.countRequest(route: "-", identity: nil, status: 503)
            return
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let stream = SocketStream(fd: fd, flusher: flusher, base: base)
        let client = ClientConnection(worker: self, stream: stream, peer: peerText, kind: kind)
        clients[ObjectIdentifier(client)] = client
        metrics.shared.activeClients.increment()
        client.start()
    }

    // MARK: registry

    func clientClosed(_ client: ClientConnection) {
        if let closed = clients.removeValue(forKey: ObjectIdentifier(client)) {
            keepUntilTurnEnds(closed)
            metrics.shared.activeClients.decrement()
            connections.decrement()
        }
        exitIfDrained()
    }

    /// The upstream side of an exchange to `key`: an idle pooled connection, else a new one (`fresh`: always a
    /// new one, for a retry). Nil when no connection could be started. The one place an exchange gets its
    /// upstream: a second protocol (HTTP/2) chooses its channel here.
    func upstreamChannel(key: PoolKey, context: ClientTLSContext, connectTimeout: TimeSpan, allowPrivate: Bool,
                         fresh: Bool = false, route: RouteMatch? = nil) -> (any UpstreamChannel)? {
        // HTTP/2 (`protocol = "h2"`, or `"auto"` until the server selects HTTP/1.1): a stream on a shared
        // connection of the key (docs/http2.md).
        if key.httpProtocol == .h2 || (key.httpProtocol == .auto && !h2Pool.knownHTTP11(key)) {
            var timeouts = route?.timeouts ?? runtime.config.upstream.timeouts
            timeouts.connect = connectTimeout
            let stream = H2UpstreamStream(key: key, context: context, worker: self, routeLabel: route?.label ?? "unmatched",
                                          timeouts: timeouts, allowPrivate: allowPrivate,
                                          maxConnections: route?.h2Connections ?? runtime.config.upstream.h2Connections, isRetry: fresh)
            switch h2Pool.place(stream) {
            case .attached, .queued: return stream
            case .refused:
                stream.refuse(.queueFull)  // answered 503 once the exchange holds it
                return stream
            case .failedToOpen: return nil
            }
        }
        if !fresh, let pooled = pool.take(key) {
            metrics.shared.upstreamReused.increment()
            return pooled
        }
        // An `auto` key here is known to speak HTTP/1.1: the connection carries HTTP/1.1, so it offers only that (a
        // server that started selecting h2 would otherwise get HTTP/1.1 bytes on an HTTP/2 connection).
        return openUpstream(key: key, context: context, connectTimeout: connectTimeout, allowPrivate: allowPrivate,
                            offering: key.httpProtocol == .auto ? UpstreamProtocol.http11.alpn : nil)
    }

    /// A new upstream connection, registered so it lives until closed.
    func openUpstream(key: PoolKey, context: ClientTLSContext, connectTimeout: TimeSpan, allowPrivate: Bool,
                      offering: [String]? = nil) -> UpstreamConnection? {
        let upstream = UpstreamConnection(key: key, context: context, worker: self, generation: runtime.generation)
        upstreams.opened(upstream)
        metrics.shared.activeUpstreams.increment()
        metrics.shared.upstreamOpened.increment()
        guard upstream.start(connectTimeout: connectTimeout, allowPrivate: allowPrivate, offering: offering) else {
            upstream.close()
            return nil
        }
        return upstream
    }

    func upstreamClosed(_ upstream: UpstreamConnection) {
        if let closed = upstreams.closed(upstream) {
            keepUntilTurnEnds(closed)
            metrics.shared.activeUpstreams.decrement()
        }
    }

    /// Keeps a closed connection alive until the end of this loop turn (see `closedThisTurn`).
    private func keepUntilTurnEnds(_ connection: AnyObject) {
        if closedThisTurn.isEmpty, let releaseEvent { event_active(releaseEvent, 0, 1) }
        closedThisTurn.append(connection)
    }

    fileprivate func releaseClosed() {
        closedThisTurn.removeAll(keepingCapacity: closedThisTurn.count <= 64)
    }

    var activeClients: Int { clients.count }
    var openUpstreams: Int { upstreams.count }
}

enum ServerError: Error, CustomStringConvertible {
    case eventLoop(String)
    /// A listening address that cannot be bound: the address, the cause, and which setting names it.
    case bind(String, String, role: String)

    /// The cause in the words of strerror(3), lower-cased: "127.0.0.1:9901: address already in use".
    static func bind(_ address: String, errno e: Int32, role: String) -> ServerError {
        var cause = String(cString: strerror(e))
        if let first = cause.first, first.isUppercase, !(cause.dropFirst().first?.isUppercase ?? false) {
            cause = first.lowercased() + cause.dropFirst()
        }
        return .bind(address, cause, role: role)
    }

    var description: String {
        switch self {
        case .eventLoop(let s): return "event loop: \(s)"
        case .bind(let address, let reason, let role): return "\(address): \(reason) (\(role))"
        }
    }
}

/// What a listening socket serves: forward-proxy requests (absolute URLs), or everything to one upstream.
/// Indirect: a connection keeps its kind for its whole life, and the payloads are larger than a pointer.
indirect enum ListenerKind {
    case forward
    case fixed(FixedListener)
    /// Requests inside an intercepted CONNECT tunnel to this host and port.
    case intercepted(host: String, port: Int)
    /// Plain HTTP requests inside a CONNECT to port 80 of this host: served as its http:// URLs.
    case plainTunnel(host: String)

    /// The setting that names this listener's address, for error messages.
    var settingName: String {
        switch self {
        case .forward: return "[proxy] listen"
        case .fixed(let listener): return "\(listener.configKey).listen"
        case .intercepted: return "intercepted tunnel"
        case .plainTunnel: return "plain HTTP tunnel"
        }
    }
}

/// One listening socket of a worker, with what it serves and who may connect.
final class ListenerHandle {
    unowned let worker: Worker
    let kind: ListenerKind
    let allowClients: [CIDR]
    var listener: OpaquePointer?
    private var resumeTimer: OpaquePointer?
    private var lastWarning = 0

    init(worker: Worker, kind: ListenerKind, allowClients: [CIDR]) {
        self.worker = worker
        self.kind = kind
        self.allowClients = allowClients
    }

    /// What the listener serves and who may connect under `runtime`: the forward listener's `allow_clients`,
    /// or the `[[listener]]` with the same address (its upstream and `allow_clients` may have changed on reload).
    func current(in runtime: ProxyRuntime) -> (ListenerKind, [CIDR]) {
        switch kind {
        case .forward:
            return (.forward, runtime.config.proxy.allowClients)
        case .fixed(let listener):
            guard let now = runtime.config.listeners.first(where: { $0.listen == listener.listen }) else { return (kind, allowClients) }
            return (.fixed(now), now.allowClients)
        case .intercepted, .plainTunnel:
            return (kind, allowClients)
        }
    }

    /// accept(2) failed, typically EMFILE/ENFILE: out of descriptors. The pending connection stays in the
    /// backlog and would wake the loop again at once, so stop accepting for a moment and try again; requests
    /// in flight go on, and accepting resumes when descriptors are free.
    func acceptFailed(errno e: Int32) {
        guard let listener else { return }
        evconnlistener_disable(listener)
        if resumeTimer == nil {
            resumeTimer = mtls_evtimer_new(worker.base, listenerResumeCallback, Unmanaged.passUnretained(self).toOpaque())
        }
        _ = mtls_evtimer_add_ms(resumeTimer, 100)
        let now = monotonicMillis()
        if now - lastWarning > 5000 {
            lastWarning = now
            worker.logger.warning("accept failed: \(String(cString: strerror(e))); pausing accepts for 100 ms (raise the descriptor limit, ulimit -n, or lower max_connections)")
        }
    }

    fileprivate func resume() {
        if let listener { evconnlistener_enable(listener) }
    }

    func free() {
        if let resumeTimer { event_free(resumeTimer) }
        resumeTimer = nil
        if let listener { evconnlistener_free(listener) }
        listener = nil
    }
}

private func listenerResumeCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ListenerHandle>.fromOpaque(ctx!).takeUnretainedValue().resume()
}

/// Open client connections across every worker, for `[proxy] max_connections`.
public final class ConnectionCounter: @unchecked Sendable {
    private let value = UnsafeMutablePointer<Int>.allocate(capacity: 1)

    init() { value.initialize(to: 0) }
    deinit { value.deallocate() }

    /// Adds one and returns the new count.
    func increment() -> Int { mtls_atomic_add(value, 1) }
    func decrement() { _ = mtls_atomic_add(value, -1) }
    var current: Int { mtls_atomic_load(value) }
}

/// Liveness of the workers, for /healthz: each beats once a second while its loop runs.
public final class WorkerHealth: @unchecked Sendable {
    private var beats: [Int]
    private var done: [Bool]
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init(count: Int) {
        beats = [Int](repeating: monotonicMillis(), count: count)
        done = [Bool](repeating: false, count: count)
        pthread_mutex_init(lock, nil)
    }

    func beat(worker: Int) {
        pthread_mutex_lock(lock)
        beats[worker] = monotonicMillis()
        pthread_mutex_unlock(lock)
    }

    func finished(worker: Int) {
        pthread_mutex_lock(lock)
        done[worker] = true
        pthread_mutex_unlock(lock)
    }

    /// Workers whose loop has not beaten for `staleAfter` milliseconds (stuck or dead).
    func stale(staleAfter: Int = 5000) -> [Int] {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        let now = monotonicMillis()
        return beats.indices.filter { !done[$0] && now - beats[$0] > staleAfter }
    }

    var allFinished: Bool {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return done.allSatisfy { $0 }
    }
}

private func workerAcceptCallback(_ listener: OpaquePointer?, _ fd: Int32, _ address: UnsafeMutablePointer<sockaddr>?,
                                  _ length: Int32, _ ctx: UnsafeMutableRawPointer?) {
    let handle = Unmanaged<ListenerHandle>.fromOpaque(ctx!).takeUnretainedValue()
    handle.worker.accept(fd: fd, address: address, handle: handle)
}

private func workerAcceptErrorCallback(_ listener: OpaquePointer?, _ ctx: UnsafeMutableRawPointer?) {
    let e = mtls_errno()
    Unmanaged<ListenerHandle>.fromOpaque(ctx!).takeUnretainedValue().acceptFailed(errno: e)
}

private func workerWakeCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<Worker>.fromOpaque(ctx!).takeUnretainedValue().woken()
}

private func workerReleaseCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<Worker>.fromOpaque(ctx!).takeUnretainedValue().releaseClosed()
}

private func workerTickCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<Worker>.fromOpaque(ctx!).takeUnretainedValue().tick()
}

private func workerDrainTimeoutCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    let worker = Unmanaged<Worker>.fromOpaque(ctx!).takeUnretainedValue()
    event_base_loopexit(worker.base, nil)
}
