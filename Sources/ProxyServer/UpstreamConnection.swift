import CEventTLS
import HTTP1
import ProxyConfig
import TLS
#if canImport(Glibc)
import Glibc
#endif

/// What decides whether an upstream connection can serve a request: the same host, port and dialled address,
/// the same egress path (direct, or which corporate proxy with which credentials), and the same TLS context,
/// which stands for one identity's certificate and one set of trust settings. A connection made for one
/// identity is never used for another, nor for a route without a certificate, nor across egress paths.
struct PoolKey: Hashable {
    var host: String
    var port: Int
    var connect: HostPort?
    var context: ObjectIdentifier
    var egress: Egress = .direct
    /// What is offered in ALPN: an HTTP/2 connection is never handed to an HTTP/1.1 exchange, nor the reverse.
    var httpProtocol: UpstreamProtocol = .http11
}

/// Why a corporate proxy did not open the tunnel to the service.
enum CorporateProxyFailure {
    /// Its host name did not resolve (a getaddrinfo code).
    case dns(Int32)
    /// The TCP connection to it failed.
    case connect(errno: Int32)
    /// It answered `CONNECT` with a non-2xx status.
    case refused(status: Int, reason: String)
    /// It closed (or reset) the connection before answering.
    case closed(errno: Int32)
    /// Its answer was not an HTTP reply.
    case malformed(String)
}

/// One TLS connection to an upstream server: a non-blocking connect, the handshake, then a `SocketStream` over
/// the socket for the exchanges. Everything asked of OpenSSL goes through its `UpstreamTLSSession` (module `TLS`).
/// It is the HTTP/1.1 `UpstreamChannel`: one exchange at a time, then back to the pool.
final class UpstreamConnection: EventHandler {
    typealias State = UpstreamChannelState
    typealias Event = UpstreamEvent

    /// How far a connection through a corporate proxy got, for messages about a timeout.
    enum CorporateHopPhase { case dialling, awaitingReply, tunnelled }

    let key: PoolKey
    let context: ClientTLSContext
    /// Unowned(unsafe), by the rule and for the measured cost written at `ClientConnection.worker`: the worker
    /// outlives its connections (it closes them before it ends; `Worker.deinit` checks it in debug builds).
    unowned(unsafe) let worker: Worker
    /// Unowned, not weak: a weak reference gives its object a side table, which makes every retain and release of
    /// a client connection take the slow path. Whoever sets it clears it (or closes this connection) before it
    /// goes: `ClientConnection` when its exchange ends or fails (`finish`, `abort`), the pool when it hands the
    /// connection out.
    @exclusivity(unchecked) unowned var owner: (any UpstreamChannelOwner)?
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

    /// The `CONNECT` exchange with the corporate proxy, while it runs; nil for a direct connection.
    private var corporateHop: CorporateHop?
    private struct CorporateHop {
        let proxy: EgressProxy
        let request: [UInt8]
        var sent = 0
        var reply: [UInt8] = []
        var phase: CorporateHopPhase = .dialling
    }
    /// Where the corporate hop stands; nil for a direct connection.
    var corporateHopPhase: CorporateHopPhase? { corporateHop?.phase }
    private var tcpConnected = false

    deinit {
        // Checked in debug builds: its stream and its timers hold this connection unowned(unsafe) or unretained,
        // so it must be closed before it goes.
        assert(state == .closed, "an upstream connection went without being closed")
    }

    init(key: PoolKey, context: ClientTLSContext, worker: Worker, generation: Int) {
        self.generation = generation
        self.key = key
        self.context = context
        self.worker = worker
        self.stream = SocketStream(flusher: worker.flusher)
    }

    var input: OpaquePointer { stream.input }
    var output: OpaquePointer { stream.output }

    /// Starts TCP connect (to `key.connect` or the resolved host) and the TLS handshake. `offering`: the ALPN list
    /// when it is not the key's (an `auto` key known to speak HTTP/1.1 offers only `http/1.1`).
    func start(connectTimeout: TimeSpan, allowPrivate: Bool, offering: [String]? = nil) -> Bool {
        // Resumes a session made earlier with this same context (identity, certificate, trust), upstream and
        // egress path.
        let sessionKey = "\(key.host):\(key.port)@\(key.connect?.description ?? "dns") via \(key.egress)"
        guard let tls = UpstreamTLSSession(context: context, host: key.host, port: key.port, sessionKey: sessionKey)
        else { return false }
        // HTTP/1.1 routes offer nothing, as before; h2 and auto offer their list (docs/http2.md).
        let offer = offering ?? (key.httpProtocol == .http11 ? nil : key.httpProtocol.alpn)
        if let offer, !tls.offerApplicationProtocols(offer) { return false }
        tls.mayWaitForCRL = context.fetchesCRLs && context.trust.revocation == .hard
        self.tls = tls
        stream.owner = self
        stream.readHighWatermark = Worker.readHighWatermark
        stream.writeLowWatermark = Worker.writeLowWatermark
        stream.enableRead()
        connectStartedMicros = monotonicMicros()
        connectTimer = makeTimer(base: worker.base)
        _ = mtls_evtimer_add_ms(connectTimer, connectTimeout.milliseconds)

        if case .proxy(let proxy) = key.egress {
            return startThroughCorporateProxy(proxy, allowPrivate: allowPrivate)
        }
        resolver = UpstreamResolver.dial(dns: worker.dns, host: key.host, port: key.port, connect: key.connect,
                                         allowPrivate: allowPrivate, failed: { [unowned self] failure in
            // Unowned (no side table, see `owner`): `close` cancels the lookup, so these never run after it.
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

    /// Dials the corporate proxy (an address the operator named: private addresses are its usual place, so
    /// the SSRF guard does not apply to it), then asks it for `CONNECT host:port`. The guard still refuses an
    /// IP-literal service address it would refuse directly; a name is resolved by the corporate proxy, out of
    /// the guard's sight (see docs/egress.md).
    private func startThroughCorporateProxy(_ proxy: EgressProxy, allowPrivate: Bool) -> Bool {
        if !allowPrivate, let ip = IPAddress(key.host), let reason = AddressPolicy.nonPublicReason(ip) {
            deferEvent(.prohibited(address: ip.description, reason: reason))
            return true
        }
        corporateHop = CorporateHop(proxy: proxy, request: CorporateProxyConnect.request(
            host: key.host, port: key.port, authorization: worker.runtime.authorization(for: proxy)))
        resolver = UpstreamResolver.dial(dns: worker.dns, host: proxy.host, port: proxy.port, connect: nil, allowPrivate: true,
                                         failed: { [unowned self] failure in
            switch failure {
            case .socket(let e): self.deferEvent(.corporateProxy(.connect(errno: e)))
            case .dns(let code): self.deferEvent(.corporateProxy(.dns(code)))
            case .prohibited(let address, let reason): self.deferEvent(.prohibited(address: address, reason: reason))
            }
        }, start: { [unowned self] address in
            self.connect(to: address)
        })
        return true
    }

    /// One step of the `CONNECT` exchange on the connected socket: true when the tunnel is open, false when
    /// waiting on the socket or after delivering a failure.
    private func advanceCorporateHop() -> Bool {
        guard var hop = corporateHop else { return true }
        if hop.phase == .tunnelled { return true }
        defer { corporateHop = hop }
        if hop.phase == .dialling { hop.phase = .awaitingReply }
        while hop.sent < hop.request.count {
            let n = hop.request.withUnsafeBytes { Glibc.send(connectingFD, $0.baseAddress! + hop.sent, $0.count - hop.sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { wait(for: EV_WRITE); return false }
                deliver(.corporateProxy(.closed(errno: errno)))
                return false
            }
            hop.sent += n
        }
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.recv(connectingFD, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { wait(for: EV_READ); return false }
                deliver(.corporateProxy(.closed(errno: errno)))
                return false
            }
            if n == 0 {
                deliver(.corporateProxy(.closed(errno: 0)))
                return false
            }
            hop.reply += chunk[0..<n]
            switch CorporateProxyConnect.parseReply(hop.reply) {
            case .incomplete: continue
            case .refused(let status, let reason):
                deliver(.corporateProxy(.refused(status: status, reason: reason)))
                return false
            case .malformed(let why):
                deliver(.corporateProxy(.malformed(why)))
                return false
            case .established(_, let extra):
                // The service speaks after the ClientHello, so nothing may follow the reply yet.
                guard extra == 0 else {
                    deliver(.corporateProxy(.malformed("bytes followed its 2xx reply before the TLS handshake began")))
                    return false
                }
                hop.phase = .tunnelled
                hop.reply = []
                return true
            }
        }
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

    /// Waits for the socket (`what`), or for another fd: a token signature's (`TLSHandshakeStep.waitForSignature`).
    private func wait(for what: Int32, on fd: Int32? = nil) {
        if let handshakeEvent { event_free(handshakeEvent) }
        handshakeEvent = event_new(worker.base, fd ?? connectingFD, Int16(what), upstreamHandshakeCallback,
                                   Unmanaged.passUnretained(self).toOpaque())
        event_add(handshakeEvent, nil)
    }

    fileprivate func socketReady() {
        guard state == .connecting, let tls else { return }
        if !attachedSocket {
            if !tcpConnected {
                // The connect finished: did it succeed?
                var e: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(connectingFD, SOL_SOCKET, SO_ERROR, &e, &length)
                if e != 0 {
                    deliver(corporateHop == nil ? .error(errno: e, tls: [], dnsError: 0) : .corporateProxy(.connect(errno: e)))
                    return
                }
                tcpConnected = true
            }
            guard advanceCorporateHop() else { return }
            guard tls.attach(socket: connectingFD) else {
                deliver(.error(errno: 0, tls: OpenSSLErrors.drain(), dnsError: 0))
                return
            }
            attachedSocket = true
        }
        // The event goes first: a signature's fd is closed as the handshake takes the signature.
        if let handshakeEvent {
            event_free(handshakeEvent)
            self.handshakeEvent = nil
        }
        switch tls.handshake() {
        case .wantRead: wait(for: EV_READ)
        case .wantWrite: wait(for: EV_WRITE)
        case .waitForSignature(let fd): wait(for: EV_READ, on: fd)
        case .waitingForCRL: retryVerificationSoon()
        case .done: handshakeDone()
        case .closed: deliver(.eof(closeNotify: false))
        case .failed(let e, let errors): deliver(.error(errno: e, tls: errors, dnsError: 0))
        }
    }
    private var attachedSocket = false

    /// Hard revocation waiting for the first fetch of a CRL: the handshake is suspended, and verified again every
    /// `Self.crlPollMillis` until the CRL is there or its fetch failed; the connect timer bounds the wait (see
    /// `timerFired`).
    private var crlRetry: CRLRetry?
    private var crlRetryTimer: OpaquePointer?
    static let crlPollMillis = 50

    private func retryVerificationSoon() {
        if let handshakeEvent {
            event_free(handshakeEvent)
            self.handshakeEvent = nil
        }
        if crlRetryTimer == nil {
            let retry = CRLRetry(self)
            crlRetry = retry
            crlRetryTimer = retry.makeTimer(base: worker.base)
        }
        waitingForCRL = true
        _ = mtls_evtimer_add_ms(crlRetryTimer, Self.crlPollMillis)
    }

    private final class CRLRetry: EventHandler {
        unowned let upstream: UpstreamConnection
        init(_ upstream: UpstreamConnection) { self.upstream = upstream }
        override func timerFired() { upstream.retryVerification() }
    }

    private var waitingForCRL = false

    fileprivate func retryVerification() {
        // Nothing new yet: look again later, without running the verification (a burst of first connections
        // would otherwise verify their chains 20 times a second each).
        if let tls, tls.stillAwaitingCRL, let timer = crlRetryTimer {
            _ = mtls_evtimer_add_ms(timer, Self.crlPollMillis)
            return
        }
        waitingForCRL = false
        socketReady()
    }

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
        if tls.sessionReused {
            worker.metrics.shared.handshakesResumed.increment()
        } else {
            worker.metrics.shared.handshakesFull.increment()
        }
        tlsVersion = tls.version
        cipher = tls.cipher
        selectedApplicationProtocol = tls.selectedApplicationProtocol
        for note in tls.trustNotes { worker.logger.warning("\(Self.describe(note, upstream: "\(key.host):\(key.port)"))") }
        connectedMicros = monotonicMicros()
        tls.startDirectIO()
        let fd = connectingFD
        connectingFD = -1
        stream.activate(fd: fd, transport: .tls(tls), base: worker.base)
        owner?.upstreamConnected(self)
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

    /// What the server selected in ALPN, read when the handshake completes; nil when it selected nothing.
    private(set) var selectedApplicationProtocol: String?

    /// The protocol version and cipher, read once when the handshake completes (renegotiation is off, so they
    /// stay): every request on the connection logs them.
    private(set) var tlsVersion: String?
    private(set) var cipher: String?

    /// A `crl_fetch` route's connection verified before the last CRL arrived: not reused, so that the server is
    /// verified again (a full handshake: its session is not resumed either) against the new CRL.
    var verifiedBeforeNewCRL: Bool {
        guard context.fetchesCRLs, let tls else { return false }
        return tls.crlGeneration != CRLCache.shared.generation
    }

    /// The proxy's own refusal of the server's certificate (pin, revocation), if that is why the handshake failed.
    var trustRefusal: TrustRefusal? { tls?.trustRefusal ?? closedVerification?.refusal }

    /// What the TLS session knew of the server's certificate when the connection closed: an HTTP/2 connection
    /// closes its transport before its exchanges ask why it failed.
    private var closedVerification: (refusal: TrustRefusal?, code: Int, message: String)?

    /// A log line for what a handshake let through under report-only pins or soft revocation.
    static func describe(_ note: TrustNote, upstream: String) -> String {
        switch note {
        case .pinMismatchReported(let presented, let subject):
            return "upstream \(upstream): key matches no pin of the route (pin_report_only, allowed): \(subject), pin-sha256=\"\(presented)\""
        case .crlUnavailableAllowed(let subject, let serial, let reason, let depth):
            let place = depth > 0 ? " (CA certificate of the chain, \(UpstreamTLSFailure.chainPlace(depth)))" : ""
            return "upstream \(upstream): CRL unavailable for \(subject), serial \(serial)\(place): \(reason) (revocation = \"soft\", allowed)"
        case .ocspStapleInvalidAllowed(let subject, let serial, let reason):
            return "upstream \(upstream): OCSP staple for \(subject), serial \(serial) not used: \(reason) (allowed)"
        }
    }

    /// What OpenSSL and the socket said about a failure, for `ConnectFailures` to turn into a response.
    func tlsFailure(errors: [OpenSSLErrorEntry], errno: Int32, closed: Bool) -> UpstreamTLSFailure {
        if let tls {
            return tls.failure(handshakeCompleted: handshakeCompleted, errors: errors, errno: errno, closed: closed)
        }
        return UpstreamTLSFailure(
            phase: handshakeCompleted ? .afterHandshake : .handshake,
            host: key.host, port: key.port,
            identity: context.identityName, certificateSubject: context.credential?.leaf.subject,
            verifyResult: closedVerification?.code ?? 0, verifyMessage: closedVerification?.message ?? "", errors: errors,
            socketErrno: errno, closed: closed, trustRefusal: closedVerification?.refusal, crlSources: .init(context.trust))
    }

    /// Hands the socket and its TLS connection over to a `Relay` (after `101 Switching Protocols`), on a libevent
    /// OpenSSL bufferevent holding whatever was read or queued and not yet used. Either way the connection is
    /// closed as far as the pool and the worker are concerned: when the hand-over fails (nil), it is closed here,
    /// so that nothing is left reading for an owner that is about to go.
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
        owner = nil
        if let timer = connectTimer {
            event_free(timer)
            connectTimer = nil
        }
        if let timer = deferredTimer {
            event_free(timer)
            deferredTimer = nil
        }
        if let timer = crlRetryTimer {
            event_free(timer)
            crlRetryTimer = nil
        }
        if let handshakeEvent {
            event_free(handshakeEvent)
            self.handshakeEvent = nil
        }
        resolver?.cancel()
        resolver = nil
        if let tls, !handshakeCompleted {
            let verify = tls.verifyResult
            closedVerification = (tls.trustRefusal, verify.code, verify.message)
        }
        // A handshake waiting for its token signature is cut off the socket and ends once the signature is made.
        if let tls, let fd = tls.abandonWhileSigning() {
            AbandonedHandshake.start(tls, fd: fd, base: worker.base)
            self.tls = nil
        }
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
        owner?.upstreamReadable(self)
    }

    override func streamWritable(_ stream: SocketStream) {
        owner?.upstreamWritable(self)
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

    /// The connect timer: connect plus handshake did not finish in time. A handshake waiting for a CRL is decided
    /// instead on what is there (hard mode: "CRL unavailable ... being fetched"), with a moment more for the rest
    /// of the handshake should the CRL have just arrived.
    override func timerFired() {
        if waitingForCRL, let tls, let timer = crlRetryTimer {
            event_del(timer)
            tls.stopWaitingForCRL()
            _ = mtls_evtimer_add_ms(connectTimer, Self.graceAfterCRLWaitMillis)
            retryVerification()
            return
        }
        if let timer = connectTimer {
            event_free(timer)
            connectTimer = nil
        }
        deliver(.connectTimeout)
    }
    static let graceAfterCRLWaitMillis = 1000

    private func deliver(_ event: Event) {
        if let owner {
            owner.upstreamEnded(self, event)
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

/// HTTP/1.1 as the exchange's upstream side: the request and response bytes are the connection's own stream,
/// as they go on the wire.
extension UpstreamConnection: UpstreamChannel {
    var requestBuffer: OpaquePointer { stream.output }
    var responseBuffer: OpaquePointer { stream.input }
    var unsentRequestBytes: Int { evbuffer_get_length(stream.output) }

    func receiveResponse(_ on: Bool) { enableRead(on) }
    func setResponseTimeout(_ span: TimeSpan?) { setReadTimeout(span) }

    func finish(reusable: Bool, idleTimeout: TimeSpan) {
        owner = nil
        // A connection made under a replaced runtime (other routes, other TLS contexts) is not kept.
        if reusable && state == .ready && generation == worker.runtime.generation {
            requestsServed += 1
            worker.pool.put(self, maxIdle: worker.runtime.config.upstream.maxIdlePerHost, idleTimeout: idleTimeout)
        } else {
            close()
        }
    }

    func abort() { close() }

    func switchToRelay() -> Endpoint? { detach() }

    func failure(for event: UpstreamEvent, timeouts: Timeouts) -> UpstreamChannelFailure {
        let response = ConnectFailures.response(for: event, upstream: self, timeouts: timeouts)
        // A corporate proxy's refusal or failure, and a token key that cannot sign, are counted apart.
        var reason = response.nextHop != nil ? "corporate_proxy" : ConnectFailures.metricReason(response.errorType)
        if case .error(_, let tls, _) = event, ConnectFailures.tokenSigningFailed(self, tls) { reason = "token_signing" }
        return UpstreamChannelFailure(response: response, metricReason: reason, warn: trustRefusal != nil)
    }

    /// A pooled connection the server closed (EOF or reset) just as it was reused: the server may have closed it
    /// before reading the request. A fresh connection that fails says something about the server, not a race.
    func requestMayBeUnprocessed(after event: UpstreamEvent) -> Bool {
        Self.requestMayBeUnprocessed(after: event, onReusedConnection: isReused)
    }

    static func requestMayBeUnprocessed(after event: UpstreamEvent, onReusedConnection reused: Bool) -> Bool {
        guard reused else { return false }
        switch event {
        case .eof, .error: return true
        default: return false
        }
    }

    var upstreamProtocol: String { "http/1.1" }
    var isReused: Bool { requestsServed > 0 }

    func describeConnection(into record: inout AccessRecord) {
        record.upstreamProtocol = upstreamProtocol
        record.upstreamStreamID = nil
        record.reused = isReused
        record.tlsVersion = tlsVersion
        record.cipher = cipher
        if isReused {
            record.connectMs = 0
        } else if state == .ready {
            record.connectMs = (connectedMicros - connectStartedMicros) / 1000
            if handshakeStartedMicros > 0 {
                record.tcpConnectMs = (handshakeStartedMicros - connectStartedMicros) / 1000
                record.tlsHandshakeMs = (connectedMicros - handshakeStartedMicros) / 1000
            }
        }
    }
}

/// A handshake whose connection was given up while its token signature was being made: kept (with itself
/// retained) until the signature's fd is readable, then resumed to its end and released
/// (`UpstreamTLSSession.finishAbandonedHandshake`), so OpenSSL's paused job does not stay allocated.
private final class AbandonedHandshake {
    private let tls: UpstreamTLSSession
    private var event: OpaquePointer?

    private init(_ tls: UpstreamTLSSession) { self.tls = tls }

    static func start(_ tls: UpstreamTLSSession, fd: Int32, base: OpaquePointer) {
        AbandonedHandshake(tls).wait(on: fd, base: base)
    }

    private func wait(on fd: Int32, base: OpaquePointer) {
        let me = Unmanaged.passRetained(self).toOpaque()
        event = event_new(base, fd, Int16(EV_READ), { _, _, ctx in
            let handshake = Unmanaged<AbandonedHandshake>.fromOpaque(ctx!).takeRetainedValue()
            handshake.signed()
        }, me)
        guard let event, event_add(event, nil) == 0 else {
            Unmanaged<AbandonedHandshake>.fromOpaque(me).release()
            return
        }
    }

    private func signed() {
        guard let event else { return }
        let base = event_get_base(event)
        event_free(event)  // before the handshake closes the signature's fd
        self.event = nil
        if let next = tls.finishAbandonedHandshake(), let base { wait(on: next, base: base) }
    }
}
