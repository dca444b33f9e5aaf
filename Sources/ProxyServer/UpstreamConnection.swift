import CEventTLS
import ProxyConfig
import TLS
#if canImport(Glibc)
import Glibc
#endif

/// What an upstream connection reports to whoever uses it: the client connection it serves, or the pool while idle.
protocol UpstreamConnectionDelegate: AnyObject {
    func upstreamConnected(_ upstream: UpstreamConnection)
    func upstreamReadable(_ upstream: UpstreamConnection)
    func upstreamWritable(_ upstream: UpstreamConnection)
    func upstreamEvent(_ upstream: UpstreamConnection, _ event: UpstreamConnection.Event)
}

/// What decides whether an upstream connection can serve a request: the same host, port and dialled address,
/// and the same TLS context, which stands for one identity's certificate and one set of trust settings.
/// A connection made for one identity is never used for another, nor for a route without a certificate.
struct PoolKey: Hashable {
    var host: String
    var port: Int
    var connect: HostPort?
    var context: ObjectIdentifier
}

/// One TLS connection to an upstream server, on a libevent OpenSSL bufferevent. The libevent side lives here;
/// everything asked of OpenSSL goes through its `UpstreamTLSSession` (module `TLS`).
final class UpstreamConnection: EventHandler {
    enum State { case connecting, ready, closed }

    enum Event {
        /// The connection closed (EOF): `closeNotify` when the server ended TLS with close_notify, false for a
        /// bare FIN, which may be a truncation.
        case eof(closeNotify: Bool)
        /// A socket or TLS error.
        case error(errno: Int32, tls: [OpenSSLErrorEntry], dnsError: Int32)
        /// The read timeout (response or idle) passed.
        case readTimeout
        /// Connect plus handshake did not finish in time.
        case connectTimeout
        /// The SSRF guard refused every address the name resolved to (or the literal address).
        case prohibited(address: String, reason: String)
    }

    let key: PoolKey
    let context: ClientTLSContext
    unowned let worker: Worker
    weak var delegate: UpstreamConnectionDelegate?
    private(set) var bev: OpaquePointer?
    /// The TLS side, from `start` until the connection closes or hands its bufferevent over.
    private var tls: UpstreamTLSSession?
    private(set) var state: State = .connecting
    private var connectTimer: OpaquePointer?
    private var resolver: UpstreamResolver?
    /// A failure found while starting, delivered from the loop once the caller has attached.
    private var deferredEvent: Event?
    private var deferredTimer: OpaquePointer?
    /// Receives the deferred timer's callback, so that the connection's own `timerFired` is the connect timeout.
    private var deferredDelivery: DeferredDelivery?
    /// Requests completed on this connection; more than 0 means the next one reuses it.
    var requestsServed = 0
    var connectStartedMicros = 0
    /// When the TLS handshake began, that is when the TCP connection was up (OpenSSL's info callback); 0 before.
    var handshakeStartedMicros: Int { tls?.handshakeStartedMicros ?? 0 }
    var connectedMicros = 0
    /// Whether it gave its handshake. Stays false for a connection whose handshake had not completed.
    var handshakeCompleted = false

    /// The runtime generation it was made under; it is pooled only while that runtime is current.
    let generation: Int

    init(key: PoolKey, context: ClientTLSContext, worker: Worker, generation: Int) {
        self.generation = generation
        self.key = key
        self.context = context
        self.worker = worker
    }

    var input: OpaquePointer { bufferevent_get_input(bev!) }
    var output: OpaquePointer { bufferevent_get_output(bev!) }

    /// Starts TCP connect (to `key.connect` or the resolved host) and the TLS handshake.
    func start(connectTimeout: TimeSpan, allowPrivate: Bool) -> Bool {
        // Resumes a session made earlier with this same context (identity, certificate, trust) and upstream.
        let sessionKey = "\(key.host):\(key.port)@\(key.connect?.description ?? "dns")"
        guard let tls = UpstreamTLSSession(context: context, host: key.host, port: key.port, sessionKey: sessionKey)
        else { return false }
        let options = Int32(BEV_OPT_CLOSE_ON_FREE.rawValue | BEV_OPT_DEFER_CALLBACKS.rawValue)
        guard let bev = tls.makeSocketBufferevent(base: worker.base, options: options) else { return false }
        self.tls = tls
        self.bev = bev
        setCallbacks(bev)
        bufferevent_setwatermark(bev, Int16(EV_READ), 0, Worker.readHighWatermark)
        bufferevent_setwatermark(bev, Int16(EV_WRITE), Worker.writeLowWatermark, 0)
        bufferevent_enable(bev, Int16(EV_READ | EV_WRITE))
        connectStartedMicros = monotonicMicros()
        connectTimer = makeTimer(base: worker.base)
        _ = mtls_evtimer_add_ms(connectTimer, connectTimeout.milliseconds)

        resolver = UpstreamResolver.dial(bev, dns: worker.dns, host: key.host, port: key.port, connect: key.connect,
                                         allowPrivate: allowPrivate) { [weak self] failure in
            switch failure {
            case .socket(let e): self?.deferEvent(.error(errno: e, tls: [], dnsError: 0))
            case .dns(let code): self?.deferEvent(.error(errno: 0, tls: [], dnsError: code))
            case .prohibited(let address, let reason): self?.deferEvent(.prohibited(address: address, reason: reason))
            }
        }
        return true
    }

    /// Reports `event` from the event loop, never from inside `start`, where the caller is not attached yet.
    private func deferEvent(_ event: Event) {
        deferredEvent = event
        if deferredTimer == nil {
            let delivery = DeferredDelivery(self)
            deferredDelivery = delivery
            deferredTimer = delivery.makeTimer(base: worker.base)
        }
        _ = mtls_evtimer_add_ms(deferredTimer, 0)
    }

    private final class DeferredDelivery: EventHandler {
        unowned let upstream: UpstreamConnection
        init(_ upstream: UpstreamConnection) { self.upstream = upstream }
        override func timerFired() { upstream.deliverDeferred() }
    }

    private func deliverDeferred() {
        guard let event = deferredEvent else { return }
        deferredEvent = nil
        deliver(event)
    }

    func setReadTimeout(_ span: TimeSpan?) {
        guard let bev else { return }
        mtls_bufferevent_set_timeouts_ms(bev, span?.milliseconds ?? 0, 0)
    }

    func enableRead(_ on: Bool) {
        guard let bev else { return }
        if on { bufferevent_enable(bev, Int16(EV_READ)) } else { bufferevent_disable(bev, Int16(EV_READ)) }
    }

    static let connectErrnos: Set<Int32> = [ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ETIMEDOUT, ECONNRESET, EADDRNOTAVAIL]

    /// Bytes received from the server so far; 0 means it never answered the TCP connect or the ClientHello.
    var serverBytesRead: UInt64 { tls?.serverBytesRead ?? 0 }

    /// Whether the handshake resumed an earlier TLS session.
    var sessionReused: Bool { tls?.sessionReused ?? false }

    /// The protocol version and cipher, read once when the handshake completes (renegotiation is off, so they
    /// stay): every request on the connection logs them.
    private(set) var tlsVersion: String?
    private(set) var cipher: String?

    /// What OpenSSL and the socket said about a failure, for `ConnectFailures` to turn into a response.
    func tlsFailure(errors: [OpenSSLErrorEntry], errno: Int32, closed: Bool) -> UpstreamTLSFailure {
        if let tls {
            return tls.failure(handshakeCompleted: handshakeCompleted, errors: errors, errno: errno, closed: closed)
        }
        return UpstreamTLSFailure(
            phase: handshakeCompleted ? .afterHandshake : .handshake,
            host: key.host, port: key.port,
            identity: context.identityName, certificateSubject: context.credential?.leaf.subject,
            verifyResult: 0, verifyMessage: "", errors: errors, socketErrno: errno, closed: closed)
    }

    /// Hands the bufferevent (and its TLS connection) over to a `Relay`, after `101 Switching Protocols`.
    /// The connection is closed as far as the pool and the worker are concerned.
    func detach() -> Endpoint? {
        guard state == .ready, let bev, let session = tls?.handOver() else { return nil }
        self.bev = nil
        self.tls = nil
        bufferevent_setcb(bev, nil, nil, nil, nil)
        mtls_bufferevent_set_timeouts_ms(bev, 0, 0)
        close()
        return Endpoint(bev: bev, tls: session)
    }

    func close() {
        guard state != .closed else { return }
        state = .closed
        tlsVersion = nil
        cipher = nil
        delegate = nil
        if let timer = connectTimer {
            event_free(timer)
            connectTimer = nil
        }
        if let timer = deferredTimer {
            event_free(timer)
            deferredTimer = nil
        }
        resolver?.cancel()
        resolver = nil
        if let bev {
            bufferevent_setcb(bev, nil, nil, nil, nil)
            // The SSL may outlive this object inside libevent for a moment: it keeps no pointer to us. A clean
            // close_notify where possible; the bufferevent frees the SSL.
            tls?.release(sendCloseNotify: handshakeCompleted)
            bufferevent_free(bev)
            self.bev = nil
            self.tls = nil
        }
        worker.upstreamClosed(self)
    }

    override func readable(_ bev: OpaquePointer) {
        delegate?.upstreamReadable(self)
    }

    override func writable(_ bev: OpaquePointer) {
        delegate?.upstreamWritable(self)
    }

    override func event(_ bev: OpaquePointer, _ what: Int16) {
        let flags = Int32(what)
        if flags & BEV_EVENT_CONNECTED != 0 {
            if let timer = connectTimer {
                event_free(timer)
                connectTimer = nil
            }
            state = .ready
            handshakeCompleted = true
            tlsVersion = tls?.version
            cipher = tls?.cipher
            connectedMicros = monotonicMicros()
            delegate?.upstreamConnected(self)
            return
        }
        let event: Event
        if flags & BEV_EVENT_TIMEOUT != 0 {
            event = .readTimeout
        } else if flags & BEV_EVENT_ERROR != 0 {
            let errors = OpenSSLErrors.drain(bufferevent: bev)
            let dns = bufferevent_socket_get_dns_error(bev)
            let real = errors.filter { !$0.isPseudo }
            if dns == 0 && !real.isEmpty && real.allSatisfy(\.isUnexpectedEOF) {
                // OpenSSL 3 reports a close without close_notify as an error; libevent 2.1 passes it on as one.
                // It is an end of stream without close_notify: the HTTP framing tells whether anything was cut short.
                event = .eof(closeNotify: false)
            } else {
                event = .error(errno: mtls_errno(), tls: errors, dnsError: dns)
            }
        } else {
            // libevent reports a failed TCP connect under the TLS bufferevent as EOF, with errno set.
            let e = mtls_errno()
            if !handshakeCompleted && serverBytesRead == 0 && Self.connectErrnos.contains(e) {
                event = .error(errno: e, tls: [], dnsError: 0)
            } else {
                event = .eof(closeNotify: tls?.receivedCloseNotify ?? false)
            }
        }
        deliver(event)
    }

    /// The connect timer: connect plus handshake did not finish in time.
    override func timerFired() {
        if let timer = connectTimer {
            event_free(timer)
            connectTimer = nil
        }
        deliver(.connectTimeout)
    }

    private func deliver(_ event: Event) {
        if let delegate {
            delegate.upstreamEvent(self, event)
        } else {
            close()
        }
    }
}
