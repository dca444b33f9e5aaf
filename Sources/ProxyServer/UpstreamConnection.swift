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

/// One TLS connection to an upstream server: a non-blocking connect, the handshake, then a `SocketStream` over
/// the socket for the exchanges. Everything asked of OpenSSL goes through its `UpstreamTLSSession` (module `TLS`).
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
    unowned(unsafe) let worker: Worker  // the worker outlives its connections; see ClientConnection.worker
    /// Unowned, not weak: a weak reference gives its object a side table, which makes every retain and release of
    /// a client connection take the slow path. Whoever sets it clears it (or closes this connection) before it
    /// goes: `ClientConnection` when its exchange ends or fails, the pool when it hands the connection out.
    unowned var delegate: UpstreamConnectionDelegate?
    /// The exchanges' bytes: queued from the start (the request head waits here while the connection is made),
    /// written once the handshake is done.
    private let stream: SocketStream
    /// The TLS side, from `start` until the connection closes or hands its socket over.
    private var tls: UpstreamTLSSession?
    private(set) var state: State = .connecting
    /// The socket while it connects and runs the handshake; the stream has it after.
    private var connectingFD: Int32 = -1
    /// Waits on the socket during the connect and the handshake.
    private var handshakeEvent: OpaquePointer?
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
        self.stream = SocketStream(flusher: worker.flusher)
    }

    var input: OpaquePointer { stream.input }
    var output: OpaquePointer { stream.output }

    /// Starts TCP connect (to `key.connect` or the resolved host) and the TLS handshake.
    func start(connectTimeout: TimeSpan, allowPrivate: Bool) -> Bool {
        // Resumes a session made earlier with this same context (identity, certificate, trust) and upstream.
        let sessionKey = "\(key.host):\(key.port)@\(key.connect?.description ?? "dns")"
        guard let tls = UpstreamTLSSession(context: context, host: key.host, port: key.port, sessionKey: sessionKey)
        else { return false }
        self.tls = tls
        stream.owner = self
        stream.readHighWatermark = Worker.readHighWatermark
        stream.writeLowWatermark = Worker.writeLowWatermark
        stream.enableRead()
        connectStartedMicros = monotonicMicros()
        connectTimer = makeTimer(base: worker.base)
        _ = mtls_evtimer_add_ms(connectTimer, connectTimeout.milliseconds)

        resolver = UpstreamResolver.dial(dns: worker.dns, host: key.host, port: key.port, connect: key.connect,
                                         allowPrivate: allowPrivate, failed: { [unowned self] failure in
            // Unowned (no side table, see `delegate`): `close` cancels the lookup, so these never run after it.
            switch failure {
            case .socket(let e): self.deferEvent(.error(errno: e, tls: [], dnsError: 0))
            case .dns(let code): self.deferEvent(.error(errno: 0, tls: [], dnsError: code))
            case .prohibited(let address, let reason): self.deferEvent(.prohibited(address: address, reason: reason))
            }
        }, start: { [unowned self] address in
            self.connect(to: address)
        })
        return true
    }

    /// Starts a non-blocking connect; 0, or the errno of a connect refused at once.
    private func connect(to address: SocketAddress) -> Int32 {
        guard state == .connecting, connectingFD < 0 else { return EALREADY }
        let family = Int32(address.storage.ss_family)
        let fd = socket(family, Int32(SOCK_STREAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return errno }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = address.withSockaddr { Glibc.connect(fd, $0, $1) }
        if rc != 0 && errno != EINPROGRESS {
            let e = errno
            Glibc.close(fd)
            return e
        }
        connectingFD = fd
        wait(for: EV_WRITE)  // the connect completes (or fails) when the socket turns writable
        return 0
    }

    private func wait(for what: Int32) {
        if let handshakeEvent { event_free(handshakeEvent) }
        handshakeEvent = event_new(worker.base, connectingFD, Int16(what), upstreamHandshakeCallback,
                                   Unmanaged.passUnretained(self).toOpaque())
        event_add(handshakeEvent, nil)
    }

    fileprivate func socketReady() {
        guard state == .connecting, let tls else { return }
        if !attachedSocket {
            // The connect finished: did it succeed?
            var e: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(connectingFD, SOL_SOCKET, SO_ERROR, &e, &length)
            if e != 0 {
                deliver(.error(errno: e, tls: [], dnsError: 0))
                return
            }
            guard tls.attach(socket: connectingFD) else {
                deliver(.error(errno: 0, tls: OpenSSLErrors.drain(), dnsError: 0))
                return
            }
            attachedSocket = true
        }
        switch tls.handshake() {
        case .wantRead: wait(for: EV_READ)
        case .wantWrite: wait(for: EV_WRITE)
        case .done: handshakeDone()
        case .closed: deliver(.eof(closeNotify: false))
        case .failed(let e, let errors): deliver(.error(errno: e, tls: errors, dnsError: 0))
        }
    }
    private var attachedSocket = false

    private func handshakeDone() {
        guard let tls else { return }
        if let timer = connectTimer {
            event_free(timer)
            connectTimer = nil
        }
        if let handshakeEvent {
            event_free(handshakeEvent)
            self.handshakeEvent = nil
        }
        state = .ready
        handshakeCompleted = true
        tlsVersion = tls.version
        cipher = tls.cipher
        connectedMicros = monotonicMicros()
        tls.startDirectIO()
        let fd = connectingFD
        connectingFD = -1
        stream.activate(fd: fd, transport: .tls(tls), base: worker.base)
        delegate?.upstreamConnected(self)
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
        stream.setReadTimeout(millis: span?.milliseconds ?? 0)
    }

    func enableRead(_ on: Bool) {
        if on { stream.enableRead() } else { stream.disableRead() }
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

    /// Hands the socket and its TLS connection over to a `Relay` (after `101 Switching Protocols`), on a libevent
    /// OpenSSL bufferevent holding whatever was read or queued and not yet used. Either way the connection is
    /// closed as far as the pool and the worker are concerned: when the hand-over fails (nil), it is closed here,
    /// so that nothing is left reading for a delegate that is about to go.
    func detach() -> Endpoint? {
        guard state == .ready, let tls, stream.fd >= 0, !TestFaults.upstreamHandOverFails,
              let (bev, session) = tls.handOver(base: worker.base, fd: stream.fd, pending: stream.input) else {
            close()
            return nil
        }
        _ = stream.releaseSocket()
        self.tls = nil
        Endpoint.move(input: stream.input, output: stream.output, to: bev)
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
        if let handshakeEvent {
            event_free(handshakeEvent)
            self.handshakeEvent = nil
        }
        resolver?.cancel()
        resolver = nil
        // A clean close_notify where the handshake completed; then the socket.
        tls?.release(sendCloseNotify: handshakeCompleted)
        tls = nil
        stream.close()
        if connectingFD >= 0 {
            Glibc.close(connectingFD)
            connectingFD = -1
        }
        worker.upstreamClosed(self)
    }

    override func streamReadable(_ stream: SocketStream) {
        delegate?.upstreamReadable(self)
    }

    override func streamWritable(_ stream: SocketStream) {
        delegate?.upstreamWritable(self)
    }

    override func streamEvent(_ stream: SocketStream, _ what: Int16) {
        let flags = Int32(what)
        if flags & BEV_EVENT_TIMEOUT != 0 {
            deliver(.readTimeout)
        } else if flags & BEV_EVENT_EOF != 0 {
            deliver(.eof(closeNotify: tls?.receivedCloseNotify ?? false))
        } else {
            deliver(.error(errno: stream.lastErrno, tls: stream.lastTLSErrors, dnsError: 0))
        }
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

private func upstreamHandshakeCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    guard let ctx else { return }
    let upstream = Unmanaged<UpstreamConnection>.fromOpaque(ctx).takeUnretainedValue()
    withExtendedLifetime(upstream) { upstream.socketReady() }
}
