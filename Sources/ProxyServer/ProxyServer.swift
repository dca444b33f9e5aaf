import CEventTLS
import Logging
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// The running proxy: N workers accepting on one address, and the main thread waiting for signals.
public final class ProxyServer: @unchecked Sendable {
    public let runtime: ProxyRuntime
    let logger: Logger
    private var workers: [Worker] = []
    private var signalBase: OpaquePointer?
    private var signalEvents: [OpaquePointer] = []
    /// The port actually bound (differs from the config when it asks for port 0).
    public private(set) var port = 0

    public init(runtime: ProxyRuntime, logger: Logger) {
        self.runtime = runtime
        self.logger = logger
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
        let me2 = Unmanaged.passUnretained(self).toOpaque()
        let watch = event_new(base, -1, Int16(EV_PERSIST), serverWatchCallback, me2)
        var second = timeval(tv_sec: 1, tv_usec: 0)
        event_add(watch, &second)
        event_base_dispatch(base)
        if let watch { event_free(watch) }
        for worker in workers { worker.join() }
        for ev in signalEvents { event_free(ev) }
        signalEvents.removeAll()
        workers.removeAll()
        event_base_free(base)
        signalBase = nil
    }

    /// Logs, at start-up, what each identity presents, and warns about expiry and key file permissions.
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
            if status.health == .expiringWithoutSuccessor {
                logger.warning("identity \(identity.name): certificate serial \(leaf.serialHex) expires in \((status.secondsLeft ?? 0) / 86_400) days (\(formatUTC(leaf.notAfter))) and no successor is staged")
            }
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

    fileprivate func handleSignal(_ sig: Int32) {
        logger.info("signal \(sig): no new connections; finishing requests in flight")
        for worker in workers { worker.requestStop() }
        if let signalBase { event_base_loopexit(signalBase, nil) }
    }
}

private func serverWatchCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().watchCertificates()
}

private func serverSignalCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().handleSignal(fd)
}
