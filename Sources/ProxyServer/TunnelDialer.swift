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
        case timedOut
    }

    private var bev: OpaquePointer?
    private var timer: OpaquePointer?
    private var done: ((Outcome) -> Void)?

    /// Dials `connect` if given, else resolves `host`. `done` is called once, on the worker's thread; on
    /// success the caller owns the bufferevent.
    init?(worker: Worker, host: String, port: Int, connect: HostPort?, timeout: TimeSpan, done: @escaping (Outcome) -> Void) {
        let options = Int32(BEV_OPT_CLOSE_ON_FREE.rawValue | BEV_OPT_DEFER_CALLBACKS.rawValue)
        guard let bev = bufferevent_socket_new(worker.base, -1, options) else { return nil }
        self.bev = bev
        self.done = done
        let me = Unmanaged.passUnretained(self).toOpaque()
        bufferevent_setcb(bev, nil, nil, tunnelDialerEventCallback, me)
        bufferevent_enable(bev, Int16(EV_READ | EV_WRITE))
        timer = mtls_evtimer_new(worker.base, tunnelDialerTimeoutCallback, me)
        _ = mtls_evtimer_add_ms(timer, timeout.milliseconds)
        let result: Int32
        if let connect, let address = SocketAddress(connect) {
            result = address.withSockaddr { bufferevent_socket_connect(bev, $0, Int32($1)) }
        } else {
            result = bufferevent_socket_connect_hostname(bev, worker.dns, AF_UNSPEC, host, Int32(port))
        }
        if result != 0 && self.bev != nil {
            // Failed at once; report from the event callback path, which libevent may not call.
            let e = mtls_errno()
            let dnsError = bufferevent_socket_get_dns_error(bev)
            finish(.failed(errno: e, dnsError: dnsError))
            return
        }
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
        finish(.timedOut)
    }

    /// Stops dialling without reporting.
    func cancel() {
        done = nil
        finish(nil)
    }

    private func finish(_ outcome: Outcome?) {
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

private func tunnelDialerEventCallback(_ bev: OpaquePointer?, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<TunnelDialer>.fromOpaque(ctx!).takeUnretainedValue().event(what)
}

private func tunnelDialerTimeoutCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<TunnelDialer>.fromOpaque(ctx!).takeUnretainedValue().timedOut()
}
