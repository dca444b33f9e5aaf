import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// Opens the plain TCP connection of a blind CONNECT tunnel (the workflow does TLS end to end through it).
final class TunnelDialer {
    enum Outcome {
        case connected(OpaquePointer)
        case failed(errno: Int32, dnsError: Int32)
        case prohibited(address: String, reason: String)
        case timedOut
    }

    private var bev: OpaquePointer?
    private var timer: OpaquePointer?
    private var resolver: UpstreamResolver?
    private var deferred: Outcome?
    private var done: ((Outcome) -> Void)?

    /// Dials `connect` if given, else resolves `host`. `done` is called once, on the worker's thread; on
    /// success the caller owns the bufferevent.
    init?(worker: Worker, host: String, port: Int, connect: HostPort?, allowPrivate: Bool, timeout: TimeSpan,
          done: @escaping (Outcome) -> Void) {
        let options = Int32(BEV_OPT_CLOSE_ON_FREE.rawValue | BEV_OPT_DEFER_CALLBACKS.rawValue)
        guard let bev = bufferevent_socket_new(worker.base, -1, options) else { return nil }
        self.bev = bev
        self.done = done
        let me = Unmanaged.passUnretained(self).toOpaque()
        bufferevent_setcb(bev, nil, nil, tunnelDialerEventCallback, me)
        bufferevent_enable(bev, Int16(EV_READ | EV_WRITE))
        timer = mtls_evtimer_new(worker.base, tunnelDialerTimeoutCallback, me)
        _ = mtls_evtimer_add_ms(timer, timeout.milliseconds)
        resolver = UpstreamResolver.dial(bev, dns: worker.dns, host: host, port: port, connect: connect,
                                         allowPrivate: allowPrivate) { [weak self] failure in
            switch failure {
            case .socket(let e): self?.report(.failed(errno: e, dnsError: 0))
            case .dns(let code): self?.report(.failed(errno: 0, dnsError: code))
            case .prohibited(let address, let reason): self?.report(.prohibited(address: address, reason: reason))
            }
        }
    }

    /// Reports from the event loop (never from inside `init`, before the caller holds this dialer).
    private func report(_ outcome: Outcome) {
        deferred = outcome
        if let timer { _ = mtls_evtimer_add_ms(timer, 0) }
    }

    fileprivate func event(_ what: Int16) {
        if Int32(what) & BEV_EVENT_CONNECTED != 0, let bev {
            self.bev = nil
            bufferevent_setcb(bev, nil, nil, nil, nil)
            finish(.connected(bev))
            return
        }
        let e = mtls_errno()
        let dnsError = bev.map { bufferevent_socket_get_dns_error($0) } ?? 0
        finish(.failed(errno: e, dnsError: dnsError))
    }

    fileprivate func timedOut() {
        if let outcome = deferred {
            deferred = nil
            finish(outcome)
        } else {
            finish(.timedOut)
        }
    }

    /// Stops dialling without reporting.
    func cancel() {
        done = nil
        finish(nil)
    }

    private func finish(_ outcome: Outcome?) {
        resolver?.cancel()
        resolver = nil
        if let timer {
            event_free(timer)
            self.timer = nil
        }
        if case .connected = outcome {} else if let bev {
            bufferevent_setcb(bev, nil, nil, nil, nil)
            bufferevent_free(bev)
        }
        bev = nil
        let callback = done
        done = nil
        if let outcome { callback?(outcome) }
    }
}

/// The trampolines hold the dialer for the length of the call: its `done` callback lets go of it (the client
/// connection drops its reference to the dialer first thing).
private func tunnelDialerEventCallback(_ bev: OpaquePointer?, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    let dialer = Unmanaged<TunnelDialer>.fromOpaque(ctx!).takeUnretainedValue()
    withExtendedLifetime(dialer) { dialer.event(what) }
}

private func tunnelDialerTimeoutCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    let dialer = Unmanaged<TunnelDialer>.fromOpaque(ctx!).takeUnretainedValue()
    withExtendedLifetime(dialer) { dialer.timedOut() }
}
