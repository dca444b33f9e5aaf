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
        event_base_dispatch(base)
        for worker in workers { worker.join() }
        for ev in signalEvents { event_free(ev) }
        signalEvents.removeAll()
        workers.removeAll()
        event_base_free(base)
        signalBase = nil
    }

    fileprivate func handleSignal(_ sig: Int32) {
        logger.info("signal \(sig): no new connections; finishing requests in flight")
        for worker in workers { worker.requestStop() }
        if let signalBase { event_base_loopexit(signalBase, nil) }
    }
}

private func serverSignalCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ProxyServer>.fromOpaque(ctx!).takeUnretainedValue().handleSignal(fd)
}
