import CEventTLS
import Logging
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// The running proxy: N workers accepting on one address, and the main thread waiting for signals.
public final class ProxyServer: @unchecked Sendable {
    /// The runtime new requests use. Read and replaced on the main thread; workers get their own reference.
    public private(set) var runtime: ProxyRuntime
    let logger: Logger
    /// Builds a runtime for a reload (generation number in, runtime out); nil disables reloading.
    private let loader: ((Int) throws -> ProxyRuntime)?
    public private(set) var reloads = 0
    public private(set) var reloadFailures = 0
    private var watcher: FileWatcher?
    private var watchEvent: OpaquePointer?
    private var debounceTimer: OpaquePointer?
    private var workers: [Worker] = []
    private var signalBase: OpaquePointer?
    private var signalEvents: [OpaquePointer] = []
    /// The port actually bound (differs from the config when it asks for port 0).
    public private(set) var port = 0

    public init(runtime: ProxyRuntime, logger: Logger, loader: ((Int) throws -> ProxyRuntime)? = nil) {
        self.runtime = runtime
        self.logger = logger
        self.loader = loader
    }

    /// Must run before the first event base is created, so a signal on the main thread can wake the workers.
    public static func prepareProcess() {
        evthread_use_pthreads()
        signal(SIGPIPE, SIG_IGN)
    }

    public var workerCount: Int {
        let configured = runtime.config.proxy.workers
        return configured > 0 ? configured : max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }

    /// Creates the workers and binds the listening sockets. Nothing is served until `run`.
    public func bind() throws {
        var address = runtime.config.proxy.listen
        for i in 0..<workerCount {
            let worker = try Worker(id: i, runtime: runtime, logger: logger)
            let bound = try worker.bind(address)
            if i == 0 {
                port = bound
                address.port = bound  // the other workers join the same port
            }
            workers.append(worker)
        }
    }

    /// Starts serving on the worker threads and returns.
    public func start() {
        for worker in workers { worker.start() }
    }

    /// Stops accepting, lets requests in flight finish, and returns when every worker has ended.
    public func stop() {
        for worker in workers { worker.requestStop() }
        for worker in workers { worker.join() }
        workers.removeAll()
    }

    /// Serves until SIGINT or SIGTERM, then lets requests in flight finish and returns.
    public func run() {
        start()
        guard let base = event_base_new() else { return }
        signalBase = base
        let me = Unmanaged.passUnretained(self).toOpaque()
        for sig in [SIGINT, SIGTERM] {
            if let ev = mtls_evsignal_new(base, sig, serverSignalCallback, me) {
                event_add(ev, nil)
                signalEvents.append(ev)
            }
        }
        if loader != nil {
            if let ev = mtls_evsignal_new(base, SIGHUP, serverReloadSignalCallback, me) {
                event_add(ev, nil)
                signalEvents.append(ev)
            }
            if let watcher = FileWatcher() {
                watcher.watch(runtime.sourceFiles)
                self.watcher = watcher
                watchEvent = event_new(base, watcher.descriptor, Int16(EV_READ | EV_PERSIST), serverFilesChangedCallback, me)
                event_add(watchEvent, nil)
                debounceTimer = mtls_evtimer_new(base, serverDebounceCallback, me)
            }
        }
        let me2 = Unmanaged.passUnretained(self).toOpaque()
        let watch = event_new(base, -1, Int16(EV_PERSIST), serverWatchCallback, me2)
        var second = timeval(tv_sec: 1, tv_usec: 0)
        event_add(watch, &second)
        event_base_dispatch(base)
        if let watch { event_free(watch) }
        if let watchEvent { event_free(watchEvent) }
        if let debounceTimer { event_free(debounceTimer) }
        watchEvent = nil
        debounceTimer = nil
        watcher = nil
        for worker in workers { worker.join() }
        for ev in signalEvents { event_free(ev) }
        signalEvents.removeAll()
        workers.removeAll()
        event_base_free(base)
        signalBase = nil
    }

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
            logger.info("identity \(identity.name): presents \(leaf.subject), serial \(leaf.serialHex), valid until \(formatUTC(leaf.notAfter))")
            presented[identity.name] = leaf.serialHex
        }
        for warning in runtime.keyPermissionWarnings { logger.warning("\(warning)") }
    }

    private var presented: [String: String] = [:]
    private var lastWarning: [String: Int] = [:]

    /// Once a second on the main thread: announce a certificate switch when it happens, and warn once a day
    /// per certificate while an identity's certificate is about to expire with no successor, or has none.
    fileprivate func watchCertificates() {
        let now = currentEpochSeconds()
        let day = now / 86_400
        for identity in runtime.config.identities {
            let status = runtime.status(identity: identity.name, at: now)
            let credential = status.active.flatMap { runtime.credentials[identity.name]?[$0] }
            let serial = credential?.leaf.serialHex ?? "none"
            if let previous = presented[identity.name], previous != serial {
                if let leaf = credential?.leaf {
                    logger.notice("identity \(identity.name): now presents serial \(leaf.serialHex) (\(leaf.subject)), valid until \(formatUTC(leaf.notAfter)); it replaces serial \(previous)")
                } else {
                    logger.error("identity \(identity.name): serial \(previous) is no longer valid and no other certificate is; its routes answer 502")
                }
            }
            presented[identity.name] = serial
            guard status.health != .ok, lastWarning["\(identity.name)/\(serial)"] != day else { continue }
            lastWarning["\(identity.name)/\(serial)"] = day
            if let leaf = credential?.leaf {
                logger.warning("identity \(identity.name): certificate serial \(leaf.serialHex) expires in \((status.secondsLeft ?? 0) / 86_400) days (\(formatUTC(leaf.notAfter))) and no successor is staged; stage the next one under [[identities.\(identity.name).certificates]]")
            } else {
                logger.error("identity \(identity.name): no currently valid certificate; its routes answer 502")
            }
        }
    }

    /// Builds a new runtime from the config file and hands it to every worker. A config that fails to load
    /// changes nothing: the old one keeps serving, and the error is logged with its file and key.
    public func reload(reason: String) {
        guard let loader else { return }
        do {
            let next = try loader(runtime.generation + 1)
            if next.config.proxy.listen != runtime.config.proxy.listen || next.config.proxy.workers != runtime.config.proxy.workers {
                logger.warning("reload (\(reason)): proxy.listen and proxy.workers take effect at the next restart")
            }
            runtime = next
            for worker in workers { worker.replaceRuntime(next) }
            reloads += 1
            watcher?.watch(next.sourceFiles)
            logger.notice("reloaded (\(reason)): \(next.config.routes.count) route(s), \(next.config.identities.count) identity(ies); requests in flight finish on the previous config")
            logIdentities(next)
        } catch {
            reloadFailures += 1
            logger.error("reload (\(reason)) failed, still serving the previous config: \(error)")
            // Take the broken files as the new baseline, so the same mistake is reported once, not on every tick.
            watcher?.watch(runtime.sourceFiles)
        }
    }

    fileprivate func filesChanged() {
        watcher?.drain()
        // Wait for a quiet moment: a cert and its key are rarely replaced in one step.
        _ = mtls_evtimer_add_ms(debounceTimer, 300)
    }

    fileprivate func debounceElapsed() {
        guard let watcher, watcher.changed() else { return }
        reload(reason: "files changed")
    }

    fileprivate func handleSignal(_ sig: Int32) {
        logger.info("signal \(sig): no new connections; finishing requests in flight")
        for worker in workers { worker.requestStop() }
        if let signalBase { event_base_loopexit(signalBase, nil) }
    }
}

private func serverWatchCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().watchCertificates()
}

private func serverReloadSignalCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().reload(reason: "SIGHUP")
}

private func serverFilesChangedCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().filesChanged()
}

private func serverDebounceCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().debounceElapsed()
}

private func serverSignalCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().handleSignal(fd)
}
