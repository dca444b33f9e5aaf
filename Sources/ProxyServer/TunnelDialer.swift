import CEventTLS
import HTTP1
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// Opens the plain TCP connection of a blind CONNECT tunnel (the workflow does TLS end to end through it):
/// to the service, or through the route's corporate proxy with a `CONNECT` of its own.
final class TunnelDialer {
    enum Outcome {
        case connected(OpaquePointer)
        case failed(errno: Int32, dnsError: Int32)
        case prohibited(address: String, reason: String)
        case timedOut
        case corporateProxy(CorporateProxyFailure, EgressProxy)
        /// The corporate proxy did not accept the connection (`connected` false) or answer CONNECT in time.
        case corporateTimeout(EgressProxy, connected: Bool)
    }

    /// The corporate proxy and how far its `CONNECT` got; nil for a direct tunnel.
    private var corporate: (proxy: EgressProxy, request: [UInt8], connected: Bool)?

    private var bev: OpaquePointer?
    private var timer: OpaquePointer?
    private var resolver: UpstreamResolver?
    private var deferred: Outcome?
    private var done: ((Outcome) -> Void)?

    /// Dials `connect` if given, else resolves `host`. `done` is called once, on the worker's thread; on
    /// success the caller owns the bufferevent.
    init?(worker: Worker, host: String, port: Int, connect: HostPort?, allowPrivate: Bool, timeout: TimeSpan,
          egress: Egress = .direct, done: @escaping (Outcome) -> Void) {
        let options = Int32(BEV_OPT_CLOSE_ON_FREE.rawValue | BEV_OPT_DEFER_CALLBACKS.rawValue)
        guard let bev = bufferevent_socket_new(worker.base, -1, options) else { return nil }
        self.bev = bev
        self.done = done
        let me = Unmanaged.passUnretained(self).toOpaque()
        bufferevent_setcb(bev, nil, nil, tunnelDialerEventCallback, me)
        bufferevent_enable(bev, Int16(EV_READ | EV_WRITE))
        timer = mtls_evtimer_new(worker.base, tunnelDialerTimeoutCallback, me)
        _ = mtls_evtimer_add_ms(timer, timeout.milliseconds)
        if case .proxy(let proxy) = egress {
            // As for upstream connections: the guard sees IP-literal hosts only; the corporate proxy resolves names.
            if !allowPrivate, let ip = IPAddress(host), let reason = AddressPolicy.nonPublicReason(ip) {
                report(.prohibited(address: ip.description, reason: reason))
                return
            }
            corporate = (proxy, CorporateProxyConnect.request(host: host, port: port, authorization: worker.runtime.authorization(for: proxy)), false)
            resolver = UpstreamResolver.dial(bev, dns: worker.dns, host: proxy.host, port: proxy.port, connect: nil,
                                             allowPrivate: true) { [weak self] failure in
                switch failure {
                case .socket(let e): self?.report(.corporateProxy(.connect(errno: e), proxy))
                case .dns(let code): self?.report(.corporateProxy(.dns(code), proxy))
                case .prohibited(let address, let reason): self?.report(.prohibited(address: address, reason: reason))
                }
            }
            return
        }
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
        if let hop = corporate, let bev {
            if Int32(what) & BEV_EVENT_CONNECTED != 0 {
                corporate?.connected = true
                hop.request.withUnsafeBytes { _ = bufferevent_write(bev, $0.baseAddress, $0.count) }
                bufferevent_setcb(bev, tunnelDialerReadCallback, nil, tunnelDialerEventCallback, Unmanaged.passUnretained(self).toOpaque())
                return
            }
            let e = Int32(what) & BEV_EVENT_EOF != 0 ? 0 : mtls_errno()
            let dnsError = bufferevent_socket_get_dns_error(bev)
            if dnsError != 0 { finish(.corporateProxy(.dns(dnsError), hop.proxy)); return }
            finish(.corporateProxy(hop.connected ? .closed(errno: e) : .connect(errno: e == 0 ? ECONNRESET : e), hop.proxy))
            return
        }
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

    /// The corporate proxy's reply to `CONNECT`: the tunnel is open once a 2xx head has been read; bytes after
    /// it are the service's and stay in the input for the relay.
    fileprivate func readable() {
        guard let hop = corporate, let bev else { return }
        let input = bufferevent_get_input(bev)
        let length = evbuffer_get_length(input)
        guard let bytes = evbuffer_pullup(input, -1) else { return }
        let reply = CorporateProxyConnect.parseReply(UnsafeRawBufferPointer(start: bytes, count: length))
        switch reply {
        case .incomplete: return
        case .refused(let status, let reason): finish(.corporateProxy(.refused(status: status, reason: reason), hop.proxy))
        case .malformed(let why): finish(.corporateProxy(.malformed(why), hop.proxy))
        case .established(let headLength, _):
            evbuffer_drain(input, headLength)
            self.bev = nil
            bufferevent_setcb(bev, nil, nil, nil, nil)
            finish(.connected(bev))
        }
    }

    fileprivate func timedOut() {
        if let outcome = deferred {
            deferred = nil
            finish(outcome)
        } else if let hop = corporate {
            finish(.corporateTimeout(hop.proxy, connected: hop.connected))
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
/// connection's machine hands the dialer back as it reports, and the connection drops it), and the read callback
/// reports too (the corporate proxy's 2xx).
private func tunnelDialerEventCallback(_ bev: OpaquePointer?, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    let dialer = Unmanaged<TunnelDialer>.fromOpaque(ctx!).takeUnretainedValue()
    withExtendedLifetime(dialer) { dialer.event(what) }
}

private func tunnelDialerReadCallback(_ bev: OpaquePointer?, _ ctx: UnsafeMutableRawPointer?) {
    let dialer = Unmanaged<TunnelDialer>.fromOpaque(ctx!).takeUnretainedValue()
    withExtendedLifetime(dialer) { dialer.readable() }
}

private func tunnelDialerTimeoutCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    let dialer = Unmanaged<TunnelDialer>.fromOpaque(ctx!).takeUnretainedValue()
    withExtendedLifetime(dialer) { dialer.timedOut() }
}
