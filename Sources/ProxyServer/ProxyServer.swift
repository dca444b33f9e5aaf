import CEventTLS
import Logging
import ProxyConfig
import StatusPage
#if canImport(Glibc)
import Glibc
#endif

/// The running proxy: N workers accepting on the same addresses, and the main thread, which handles signals,
/// reloads, certificate switches and the admin endpoint.
public final class ProxyServer: @unchecked Sendable {
    /// The runtime new requests use. Read and replaced on the main thread; workers get their own reference.
    public private(set) var runtime: ProxyRuntime
    /// Runtimes replaced by reloads, released here once no worker or exchange holds them.
    private var retired = RetiredRuntimes<ProxyRuntime>()
    let logger: Logger
    public let metrics = ProxyMetrics()
    /// systemd readiness (Type=notify); does nothing without $NOTIFY_SOCKET.
    private let notifier = SystemdNotifier()
    /// Reads the configuration again for a reload; nil disables reloading.
    private let loader: (() throws -> ProxyConfiguration)?
    private var accessLog: AccessLog
    private var workers: [Worker] = []
    private var health: WorkerHealth?
    private let connections = ConnectionCounter()
    /// bcrypt off the loops, and the per-address limit on failed proxy authentications (issue 15 point 4).
    private let hashing = PasswordHashing()
    private let authLimiter = AuthFailureLimiter()
    private var base: OpaquePointer?
    private var events: [OpaquePointer] = []
    private var admin: AdminServer?
    private var watcher: FileWatcher?
    private var debounceTimer: OpaquePointer?
    private var drainCheck: OpaquePointer?
    private var draining = false
    private var started = false
    /// When the process started serving, and its config loads (start, reloads), newest first: for the status page.
    private let startedAt = currentEpochSeconds()
    private var configLoads: [ReloadEvent] = []
    static let configLoadsKept = 5

    /// The ports actually bound (they differ from the config where it asks for port 0).
    public private(set) var port = 0
    public private(set) var listenerPorts: [Int] = []
    public var adminPort: Int? { admin?.port }

    public init(runtime: ProxyRuntime, logger: Logger, loader: (() throws -> ProxyConfiguration)? = nil) throws {
        self.runtime = runtime
        self.logger = logger
        self.loader = loader
        self.accessLog = try AccessLog(runtime.config.log)
        recordConfigLoad(ReloadEvent(at: startedAt, reason: "start", success: true))
        // The files are watched from now, not from `run`: a change while the listeners bind and the workers start
        // waits in the inotify queue (and differs from this baseline) until the loop reads it.
        if loader != nil, let watcher = FileWatcher() {
            watcher.watch(runtime.sourceFiles)
            self.watcher = watcher
        }
        // Loading a large config frees much of what it allocated (the parsed document, intermediate values);
        // hand the free pages back so resident memory is what the runtime holds.
        malloc_trim(0)
    }

    private func recordConfigLoad(_ event: ReloadEvent) {
        configLoads.insert(event, at: 0)
        if configLoads.count > Self.configLoadsKept { configLoads.removeLast() }
    }

    /// Must run before the first event base is created, so a signal on the main thread can wake the workers.
    public static func prepareProcess() {
        evthread_use_pthreads()
        // SIGHUP asks for a reload; until `run` installs the loop's handler (after the config is read, the
        // listeners bound and the workers started), its default action would end the process. A reload sent by
        // a supervisor as soon as the port answers is noted instead, and done once `run` takes reloads.
        // libevent's handler replaces this one.
        sighupWhileStarting = 0
        signal(SIGHUP) { _ in sighupWhileStarting = 1 }
        signal(SIGPIPE, SIG_IGN)
    }

    public var workerCount: Int {
        let configured = runtime.config.proxy.workers
        return configured > 0 ? configured : max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }

    /// Creates the workers, binds every listening socket and the admin endpoint. Nothing is served until `start`.
    public func bind() throws {
        guard let base = event_base_new() else { throw ServerError.eventLoop("event_base_new failed") }
        self.base = base
        let config = runtime.config
        let health = WorkerHealth(count: workerCount)
        self.health = health
        var forward = config.proxy.listen
        var fixed = config.listeners.map(\.listen)
        // Sockets a supervisor handed over (LISTEN_FDS) are used as they are; every other address is bound here,
        // and no other process may share it (see SocketAddress.probeExclusive); port 0 is always new.
        let activation = SocketActivation.fromEnvironment()
        defer { for socket in activation.sockets { close(socket.fd) } }  // the workers hold their own copies
        var addresses: [(HostPort, String)] = [(forward, ListenerKind.forward.settingName)]
        for listener in config.listeners { addresses.append((listener.listen, ListenerKind.fixed(listener).settingName)) }
        for (address, role) in addresses where address.port != 0 && activation.socket(for: address) == nil {
            if let e = SocketAddress.probeExclusive(address) { throw ServerError.bind(address.description, errno: e, role: role) }
        }
        for i in 0..<workerCount {
            let worker = try Worker(id: i, runtime: runtime, accessLog: accessLog, metrics: metrics, health: health,
                                    connections: connections, logger: logger, hashing: hashing, authLimiter: authLimiter)
            let p = try worker.bind(forward, kind: .forward, allowClients: config.proxy.allowClients,
                                    inherited: activation.socket(for: config.proxy.listen))
            var ports: [Int] = []
            for (j, listener) in config.listeners.enumerated() {
                ports.append(try worker.bind(fixed[j], kind: .fixed(listener), allowClients: listener.allowClients,
                                             inherited: activation.socket(for: listener.listen)))
            }
            if i == 0 {
                // With port 0 the kernel chose; the other workers join the same ports.
                port = p
                forward.port = p
                listenerPorts = ports
                for j in fixed.indices { fixed[j].port = ports[j] }
            }
            workers.append(worker)
        }
        if let settings = config.admin {
            admin = try AdminServer(base: base, settings: settings, state: self, inherited: activation.socket(for: settings.listen))
        }
    }

    /// Starts the worker threads and returns; the main thread's loop runs in `run`.
    public func start() {
        CRLFetcher.shared.configure(runtime.config)
        for worker in workers { worker.start() }
        started = true
    }

    /// Stops accepting, lets requests in flight finish, and returns when every worker has ended.
    public func stop() {
        for worker in workers { worker.requestStop() }
        for worker in workers { worker.join() }
        workers.removeAll()
        hashing.shutdown()
    }

    /// Serves until SIGINT or SIGTERM, then drains: readiness turns 503, listeners close, requests in flight
    /// finish (up to `[proxy] drain_timeout`), and it returns.
    public func run() {
        if !started { start() }
        guard let base else { return }
        if TestFaults.slowStart { usleep(2_000_000) }
        let me = Unmanaged.passUnretained(self).toOpaque()
        func add(_ ev: OpaquePointer?, every seconds: Int? = nil) {
            guard let ev else { return }
            if let seconds {
                var tv = timeval(tv_sec: seconds, tv_usec: 0)
                event_add(ev, &tv)
            } else {
                event_add(ev, nil)
            }
            events.append(ev)
        }
        for sig in [SIGINT, SIGTERM] { add(mtls_evsignal_new(base, sig, serverSignalCallback, me)) }
        add(event_new(base, -1, Int16(EV_PERSIST), serverWatchCallback, me), every: 1)
        if loader != nil {
            add(mtls_evsignal_new(base, SIGHUP, serverReloadSignalCallback, me))
            if let watcher {
                add(event_new(base, watcher.descriptor, Int16(EV_READ | EV_PERSIST), serverFilesChangedCallback, me))
                debounceTimer = mtls_evtimer_new(base, serverDebounceCallback, me)
            }
            // A SIGHUP that came while starting: libevent's handler is in place now, so one arriving from here
            // on is its; one that came before is done as the loop's first event.
            if sighupWhileStarting != 0 {
                sighupWhileStarting = 0
                if let once = mtls_evtimer_new(base, serverReloadSignalCallback, me) {
                    events.append(once)
                    _ = mtls_evtimer_add_ms(once, 0)
                }
            }
        }
        drainCheck = event_new(base, -1, Int16(EV_PERSIST), serverDrainCheckCallback, me)
        notifier.ready(status: servingStatus())
        event_base_dispatch(base)
        for worker in workers { worker.join() }
        workers.removeAll()
        hashing.shutdown()
        for ev in events { event_free(ev) }
        events.removeAll()
        if let debounceTimer { event_free(debounceTimer) }
        if let drainCheck { event_free(drainCheck) }
        debounceTimer = nil
        drainCheck = nil
        watcher = nil
        admin = nil
        event_base_free(base)
        self.base = nil
    }

    // MARK: drain

    fileprivate func beginDrain(signal: Int32) {
        guard !draining else {
            logger.warning("signal \(signal) again while draining: stopping now")
            for worker in workers { worker.forceStop() }
            if let base { event_base_loopbreak(base) }
            return
        }
        draining = true
        notifier.stopping(status: "draining")
        logger.info("signal \(signal): draining; no new connections, requests in flight finish (up to \(runtime.config.proxy.drainTimeout))")
        for worker in workers { worker.requestStop() }
        var tenth = timeval(tv_sec: 0, tv_usec: 100_000)
        if let drainCheck { event_add(drainCheck, &tenth) }
    }

    fileprivate func checkDrained() {
        guard let health, health.allFinished, let base else { return }
        event_base_loopexit(base, nil)
    }

    // MARK: reload

    /// Builds a new runtime from the config file and hands it to every worker. A config that fails to load
    /// changes nothing: the old one keeps serving, and the error is logged with its file and key.
    public func reload(reason: String) {
        guard let loader, !draining else { return }
        notifier.reloading()
        defer { notifier.ready(status: servingStatus()) }
        // The files the newest config names, once it parses: what the watcher follows even if the reload fails.
        var attempted: [String]?
        do {
            let config = try loader()
            attempted = ProxyRuntime.sourceFiles(of: config)
            let next = try ProxyRuntime(config: config, generation: runtime.generation + 1)
            // The access log file is opened anew, so that a reload (SIGHUP) after rotating it starts a new file;
            // each worker writes what it buffered to the old one first. Where the same file cannot be opened
            // again, the reload still goes through (a certificate rotation must not wait on the log).
            let log: AccessLog
            do {
                log = try AccessLog(next.config.log)
            } catch where next.config.log == runtime.config.log {
                logger.warning("reload (\(reason)): cannot reopen the access log, writing on to the open file: \(error)")
                log = accessLog
            }
            let needRestart = ReloadScope.settingsNeedingRestart(old: runtime.config, new: next.config)
            if !needRestart.isEmpty {
                logger.warning("reload (\(reason)): changes to \(needRestart.joined(separator: ", ")) take effect at the next restart; everything else applies now")
            }
            // The old runtime stays complete and in use until each worker takes the new one (between two
            // events); its last release happens here, not on a worker (see RetiredRuntimes).
            retired.retire(runtime)
            runtime = next
            CRLFetcher.shared.configure(next.config)
            accessLog = log
            for worker in workers { worker.replaceRuntime(next, accessLog: log) }
            metrics.recordConfigLoad(success: true, at: currentEpochSeconds(), isReload: true)
            recordConfigLoad(ReloadEvent(at: currentEpochSeconds(), reason: reason, success: true))
            watcher?.watch(next.sourceFiles)
            logger.notice("reloaded (\(reason)): \(next.config.routes.count) route(s), \(next.config.identities.count) identity(ies); requests in flight finish on the previous config")
            logIdentities(next)
        } catch {
            metrics.recordConfigLoad(success: false, at: currentEpochSeconds(), isReload: true)
            let firstError = "\(error)".split(separator: "\n", omittingEmptySubsequences: true).first.map(String.init)
            recordConfigLoad(ReloadEvent(at: currentEpochSeconds(), reason: reason, success: false, error: firstError))
            logger.error("reload (\(reason)) failed, still serving the previous config: \(error)")
            // Follow the files the failed config names (a key it names may appear later), and take them as the
            // new baseline, so the same mistake is reported once, not on every change. A config that does not
            // parse names nothing new: the files in use (the config among them) stay watched.
            watcher?.watch(attempted ?? runtime.sourceFiles)
        }
    }

    fileprivate func filesChanged() {
        guard watcher?.drain() == true else { return }
        // Wait for a quiet moment: a certificate and its key are rarely replaced in one step.
        _ = mtls_evtimer_add_ms(debounceTimer, 300)
    }

    fileprivate func debounceElapsed() {
        guard let watcher else { return }
        watcher.addWatches()  // a folder that did not exist may have appeared
        guard watcher.changed() else { return }
        reload(reason: "files changed")
    }

    // MARK: certificates

    private var presented: [String: String] = [:]
    private var lastWarning: [String: Int] = [:]

    /// Logs, at start-up and after a reload, what each identity presents, and warns about key file permissions.
    /// Expiry warnings come from the once-a-second watch, once a day per certificate.
    public func logIdentities(_ runtime: ProxyRuntime) {
        let now = currentEpochSeconds()
        for identity in runtime.config.identities {
            let status = runtime.status(identity: identity.name, at: now)
            guard let active = status.active, let credential = runtime.credentials[identity.name]?[active] else {
                logger.error("identity \(identity.name): no currently valid certificate; its routes will answer 502")
                continue
            }
            let leaf = credential.leaf
            logger.info("identity \(identity.name): presents \(leaf.subject), serial \(leaf.serialHex), valid until \(UTCTime.readable(leaf.notAfter))")
            if let previous = presented[identity.name], previous != leaf.serialHex { metrics.countCertificateSwitch(identity: identity.name) }
            presented[identity.name] = leaf.serialHex
        }
        for warning in runtime.keyPermissionWarnings { logger.warning("\(warning)") }
        if let fault = TestFaults.announcement { logger.warning("\(fault)") }
    }

    /// Once a second on the main thread: frees the runtimes earlier reloads replaced, once nothing uses them.
    fileprivate func releaseRetiredRuntimes() {
        retired.releaseUnused()
    }

    /// Once a second on the main thread: announce a certificate switch when it happens, and warn once a day
    /// per certificate while an identity's certificate is about to expire with no successor, or has none.
    fileprivate func watchCertificates() {
        let now = currentEpochSeconds()
        metrics.statusBoard.tick(now: now)
        let day = now / 86_400
        for identity in runtime.config.identities {
            let status = runtime.status(identity: identity.name, at: now)
            let credential = status.active.flatMap { runtime.credentials[identity.name]?[$0] }
            let serial = credential?.leaf.serialHex ?? "none"
            if let previous = presented[identity.name], previous != serial {
                if let leaf = credential?.leaf {
                    metrics.countCertificateSwitch(identity: identity.name)
                    logger.notice("identity \(identity.name): now presents serial \(leaf.serialHex) (\(leaf.subject)), valid until \(UTCTime.readable(leaf.notAfter)); it replaces serial \(previous)")
                } else {
                    logger.error("identity \(identity.name): serial \(previous) is no longer valid and no other certificate is; its routes answer 502")
                }
            }
            presented[identity.name] = serial
            guard status.health != .ok, lastWarning["\(identity.name)/\(serial)"] != day else { continue }
            lastWarning["\(identity.name)/\(serial)"] = day
            if let leaf = credential?.leaf {
                logger.warning("identity \(identity.name): certificate serial \(leaf.serialHex) expires in \((status.secondsLeft ?? 0) / 86_400) days (\(UTCTime.readable(leaf.notAfter))) and no successor is staged; stage the next one under [[identities.\(identity.name).certificates]]")
            } else {
                logger.error("identity \(identity.name): no currently valid certificate; its routes answer 502")
            }
        }
    }
}

extension ProxyServer: AdminState {
    func healthProblem() -> String? {
        guard let health else { return "not started" }
        let stale = health.stale()
        return stale.isEmpty ? nil : "worker(s) \(stale.map(String.init).joined(separator: ", ")) not responding"
    }

    func notReadyReason() -> String? {
        if draining { return "draining" }
        if !started { return "starting" }
        if runtime.config.admin?.readyRequiresValidIdentities == true {
            let missing = ReadinessReport.identitiesWithoutCertificate(runtime, at: currentEpochSeconds())
            if !missing.isEmpty {
                return "no valid certificate for identity \(missing.joined(separator: ", ")) (admin.ready_requires_valid_identities)"
            }
        }
        return nil
    }

    func identityReport() -> String {
        ReadinessReport.identities(runtime, at: currentEpochSeconds())
    }

    /// The STATUS line systemd shows while serving.
    fileprivate func servingStatus() -> String {
        "serving \(runtime.config.routes.count) route(s), \(runtime.config.identities.count) identity(ies)"
    }

    /// The status page of this moment, and the Content-Security-Policy it is served with.
    func statusPage() -> (html: String, policy: String) {
        let now = currentEpochSeconds()
        let traffic = metrics.statusBoard.traffic(now: now)
        let build = BuildInfo.current
        let live = LiveFigures(version: build.version, commit: build.commit, startedAt: startedAt, workers: workerCount,
                               connections: connections.current, notReady: notReadyReason(),
                               pools: metrics.statusBoard.poolFigures(), reloads: configLoads,
                               traffic: traffic.routes, windowSeconds: traffic.windowSeconds)
        return (StatusReport.page(runtime, now: now, live: live), StatusPage.contentSecurityPolicy(styleHash: StatusReport.styleHash))
    }

    func metricsText() -> String {
        metrics.refreshCertificates(runtime, now: currentEpochSeconds())
        return metrics.render()
    }
}

/// Set by the SIGHUP handler `prepareProcess` installs for the start-up (a plain store, safe in a signal
/// handler; initialised there before the handler can run); read by `run` once the loop's handler is in place.
nonisolated(unsafe) private var sighupWhileStarting: sig_atomic_t = 0

private func serverReloadSignalCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().reload(reason: "SIGHUP")
}

private func serverFilesChangedCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().filesChanged()
}

private func serverDebounceCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().debounceElapsed()
}

private func serverWatchCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    let server = Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue()
    server.watchCertificates()
    server.releaseRetiredRuntimes()
}

private func serverDrainCheckCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().checkDrained()
}

private func serverSignalCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().beginDrain(signal: fd)
}

/// What a reload cannot change in a running process. Everything else in a new configuration applies to new
/// requests at once: routes, identities, trust, limits, timeouts, auth_file, interception, the access log,
/// allow_clients of the proxy and of every listener, a listener's upstream, and `[upstream] nameservers`.
enum ReloadScope {
    /// The settings that differ between `old` and `new` and need a restart, by name.
    static func settingsNeedingRestart(old: ProxyConfiguration, new: ProxyConfiguration) -> [String] {
        var names: [String] = []
        if old.proxy.listen != new.proxy.listen { names.append("[proxy] listen") }
        if old.proxy.workers != new.proxy.workers { names.append("[proxy] workers") }
        if old.listeners.map(\.listen) != new.listeners.map(\.listen) { names.append("[[listener]] listen (adding or removing listeners)") }
        // [admin] ready_requires_valid_identities is read from the current config: it applies at once.
        if old.admin?.listen != new.admin?.listen || old.admin?.allowClients != new.admin?.allowClients {
            names.append("[admin] listen and allow_clients")
        }
        if old.log.level != new.log.level { names.append("[log] level") }
        if old.log.operationalFormat != new.log.operationalFormat { names.append("[log] operational_format") }
        return names
    }
}
