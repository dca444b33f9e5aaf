import CEventTLS
import HTTP1
import ProxyConfig
import TLS
#if canImport(Glibc)
import Glibc
#endif

/// One connection from a workflow: the libevent shell around a `ConnectionStateMachine` (the connection's life)
/// and the `Exchange` in progress (one request and its response). It feeds events to the machine and carries out
/// the actions it returns; the HTTP work of an exchange (routing, forwarding heads, moving bodies) is here too.
/// See docs/ARCHITECTURE.md for the walk of one request.
final class ClientConnection: EventHandler, UpstreamChannelOwner {
    /// Unowned(unsafe): the worker outlives its connections (it frees them before it ends), and a checked
    /// unowned reference costs an atomic increment and decrement at every use.
    unowned(unsafe) let worker: Worker
    /// The client's side: its socket as a `SocketStream`, or (interception) the TLS filter over its bufferevent.
    private var client: Endpoint
    let peer: String
    private(set) var kind: ListenerKind
    /// The machine and the exchange live in storage allocated once per connection and reused by every request
    /// on it. Reached through pointers, they skip the dynamic exclusivity checks Swift makes on class properties
    /// (measured at about 1,500 instructions per request); nothing outside this class sees them.
    private let machineStorage: UnsafeMutablePointer<ConnectionStateMachine<SystemClock>>
    /// The exchange's storage, taken from the worker's `ExchangeStore` when a request begins and given back when
    /// the connection goes idle: an idle connection holds none.
    private var exchangeStorage: UnsafeMutablePointer<Exchange>?
    private var machine: ConnectionStateMachine<SystemClock> {
        unsafeAddress { UnsafePointer(machineStorage) }
        unsafeMutableAddress { machineStorage }
    }
    private var exchange: Exchange {
        @inline(__always) unsafeAddress { UnsafePointer(exchangePointer) }
        @inline(__always) unsafeMutableAddress { exchangePointer }
    }
    private var exchangePointer: UnsafeMutablePointer<Exchange> {
        @inline(__always) get { exchangeStorage ?? takeExchange() }
    }
    @inline(never)
    private func takeExchange() -> UnsafeMutablePointer<Exchange> {
        let storage = worker.exchanges.take()
        exchangeStorage = storage
        return storage
    }
    /// Idle: the finished exchange's storage goes back to the worker.
    private func releaseExchange() {
        guard let exchangeStorage else { return }
        self.exchangeStorage = nil
        worker.exchanges.give(exchangeStorage)
    }
    /// The exchange's upstream side (`UpstreamChannel`): this connection talks to it through that interface only.
    private var upstream: (any UpstreamChannel)?
    /// A tunnel or an upgraded connection: both sides belong to it.
    private var relay: Relay?
    private var dialer: TunnelDialer?
    /// A tunnel answered 200 whose first bytes have not yet said how it is served.
    private var openedTunnel: OpenedTunnel? {
        get { openedTunnelSlot?.value }
        set { openedTunnelSlot = newValue.map(OpenedTunnelSlot.init) }
    }
    /// Boxed: most connections never open a tunnel, and an idle connection should not carry its room.
    private var openedTunnelSlot: OpenedTunnelSlot?
    private final class OpenedTunnelSlot {
        let value: OpenedTunnel
        init(_ value: OpenedTunnel) { self.value = value }
    }
    /// The connection's one timer: the head deadline, the flush poll under a TLS filter, the linger deadline.
    private var timer: OpaquePointer?
    /// How far the search for the end of the request head has got (the head is drained only when complete).
    private var headScan = HeadParser.Scan()
    private var upstreamReadPaused = false
    private var clientReadPaused = false
    /// Set while the head loop runs: an exchange that ends inside it lets the loop parse the next head.
    private var parsingHeads = false
    private var finished = false

    init(worker: Worker, stream: SocketStream, peer: String, kind: ListenerKind) {
        self.worker = worker
        self.client = Endpoint(stream: stream)
        self.peer = peer
        self.kind = kind
        machineStorage = .allocate(capacity: 1)
        machineStorage.initialize(to: ConnectionStateMachine(clock: SystemClock(),
                                                             headerTimeoutMillis: worker.runtime.config.proxy.headerTimeout.milliseconds,
                                                             clientTimeoutMillis: worker.runtime.config.proxy.clientTimeout.milliseconds))
    }

    deinit {
        machineStorage.deinitialize(count: 1)
        machineStorage.deallocate()
        if let exchangeStorage {
            exchangeStorage.deinitialize(count: 1)
            exchangeStorage.deallocate()
        }
    }

    /// How far the exchange in progress has got, for the machine; none between exchanges.
    private var progress: ExchangeProgress { exchangeStorage?.pointee.progress ?? .none }

    private var input: OpaquePointer { client.input }
    private var output: OpaquePointer { client.output }
    private var runtime: ProxyRuntime { worker.runtime }

    func start() {
        client.start(handler: self, readTimeoutMillis: runtime.config.proxy.clientTimeout.milliseconds)
    }

    // MARK: carrying out the machine's actions

    private func perform(_ action: ConnectionStateMachine<SystemClock>.Action) {
        switch action {
        case .none:
            break
        case .resumeReading:
            client.enableRead()
        case .armTimer(let deadline):
            armTimer(inMillis: deadline - monotonicMillis())
        case .readNextHead:
            // A full client_timeout of idleness from the end of this response, not from the last read: else the
            // idle timeout could fire while the response just queued is still unsent.
            client.setReadTimeout(millis: runtime.config.proxy.clientTimeout.milliseconds)
            readHeads()
        case .answerRequestTimeout(let why):
            answerRequestTimeout(why)
        case .answerError:
            preconditionFailure("answerError is handled where the error is known")
        case .closeAfterFlush:
            client.disableRead()
            client.setWriteLowWatermark(0)
            continueFlush()
        case .linger(let until):
            evbuffer_drain(input, evbuffer_get_length(input))
            client.setReadTimeout(millis: 0)
            client.enableRead()
            armTimer(inMillis: until - monotonicMillis())
        case .abort(let reset):
            teardown(reset: reset)
        }
    }

    private func armTimer(inMillis ms: Int) {
        if timer == nil { timer = makeTimer(base: worker.base) }
        _ = mtls_evtimer_add_ms(timer, max(ms, 0))
    }

    /// Flushes every layer towards the client (close_notify included), then reports `flushed` to the machine.
    private func continueFlush() {
        switch client.flushStep() {
        case .pending(let belowTop):
            // The top layer's drain comes as a write callback; a TLS filter's lower layer has none: poll it.
            if belowTop { armTimer(inMillis: 5) }
        case .shut:
            perform(machine.flushed())
        }
    }

    /// The one exit: frees everything this connection holds. `reset` when a response was cut short.
    private func teardown(reset: Bool) {
        guard !finished else { return }
        finished = true
        machine.aborted()
        dialer?.cancel()
        dialer = nil
        if let upstream {
            self.upstream = nil
            upstream.abort()
        }
        if let timer {
            event_free(timer)
            self.timer = nil
        }
        if let relay {
            // The relay owns the client's side now; closing it frees both.
            self.relay = nil
            relay.close(reset: reset)
        } else {
            client.free(reset: reset)
        }
        releaseExchange()
        worker.clientClosed(self)
    }

    /// Closes at once, dropping whatever is unsent (shutdown of the worker).
    func abort() {
        teardown(reset: false)
    }

    /// Graceful shutdown: close now if idle, else after the current response.
    func drain() {
        if machine.isAwaitingHead && evbuffer_get_length(input) > 0 { return }
        perform(machine.drain())
    }

    // MARK: client events

    override func streamReadable(_ stream: SocketStream) { clientReadable() }
    override func streamWritable(_ stream: SocketStream) { clientWritable() }
    override func streamEvent(_ stream: SocketStream, _ what: Int16) { clientEvent(what, filter: nil) }
    override func readable(_ bev: OpaquePointer) { clientReadable() }
    override func writable(_ bev: OpaquePointer) { clientWritable() }
    override func event(_ bev: OpaquePointer, _ what: Int16) { clientEvent(what, filter: bev) }

    private func clientReadable() {
        switch machine.state {
        case .awaitingHead: readHeads()
        case .exchanging: pumpRequestBody()
        case .awaitingTunnelBytes: serveOpenedTunnel()
        case .closing: evbuffer_drain(input, evbuffer_get_length(input))
        case .dialling, .relaying, .closed: break
        }
    }

    private func clientWritable() {
        switch machine.state {
        case .closing(.flushing):
            continueFlush()
        case .exchanging:
            if upstreamReadPaused && evbuffer_get_length(output) <= Worker.writeLowWatermark {
                upstreamReadPaused = false
                upstream?.receiveResponse(true)
                pumpResponse()
            }
        default:
            break
        }
    }

    override func timerFired() {
        if case .closing(.flushing) = machine.state {
            continueFlush()
            return
        }
        perform(machine.timerFired())
    }

    /// `filter`: the bufferevent that reported it, when the client's side is one (interception).
    private func clientEvent(_ what: Int16, filter bev: OpaquePointer?) {
        let flags = Int32(what)
        // The TLS filter of an intercepted tunnel reports its completed handshake; nothing to do.
        if flags & BEV_EVENT_CONNECTED != 0 { return }
        if case .intercepted(let host, _) = kind, flags & BEV_EVENT_ERROR != 0, machine.isAwaitingHead, let bev,
           let why = OpenedTunnel.clientTLSFailure(bev) {
            worker.logger.info("intercepted tunnel to \(host) from \(peer): TLS with the client failed: \(why) (does the workflow trust the local CA? see `mtls-proxy ca --pem`)")
        }
        let action: ConnectionStateMachine<SystemClock>.Action
        let stateBefore = machine.state
        let timedOut = flags & BEV_EVENT_TIMEOUT != 0 && flags & BEV_EVENT_ERROR == 0
        if case .intercepted = kind, flags & BEV_EVENT_ERROR != 0, machine.isAwaitingHead, client.tls?.handshakeFinished == false {
            action = machine.clientTLSFailed()
        } else if timedOut {
            action = machine.clientTimedOut(progress)
        } else if flags & BEV_EVENT_EOF != 0 && flags & BEV_EVENT_ERROR == 0 {
            action = machine.clientEOF(progress)
        } else {
            // An intercepted client's FIN without close_notify comes here (OpenSSL 3 reports it as an error), not
            // as an EOF as a relay takes it: here the proxy is that client's TLS endpoint and reads HTTP from it,
            // and a TLS stream that ends without close_notify may have been cut by someone else (RFC 8446 §6.1),
            // so it is not taken as a half-close after which a response is still owed. A relay only carries
            // bytes whose own protocol says where they end; the two ends judge a truncation there.
            action = machine.clientError()
        }
        if case .abort = action, exchangeStorage != nil, exchange.isRecording {
            // Nothing more can be delivered. The status is 499 only when nothing was answered yet (status 0):
            // once a response began, the record keeps the status the client was sent, and proxy_status says
            // the response was cut.
            if exchange.record.status == 0 { exchange.record.status = 499 }
            let why: String
            if case .dialling = stateBefore {
                why = "client closed the connection before the tunnel was open"  // client_timeout does not apply while dialling
            } else if case .awaitingTunnelBytes = stateBefore {
                why = timedOut ? "client sent nothing in the tunnel within client_timeout" : "client closed the tunnel before sending anything in it"
            } else {
                why = timedOut ? "the request body stalled for client_timeout after the response began"
                               : "client closed the connection before the response completed"
            }
            finishRecord(proxyStatus: why)
        }
        perform(action)
    }

    // MARK: request head

    /// Parses every complete head in the input, one exchange after the other (pipelining), as a loop.
    private func readHeads() {
        guard !parsingHeads else { return }
        parsingHeads = true
        defer { parsingHeads = false }
        while machine.isAwaitingHead && !finished {
            let available = evbuffer_get_length(input)
            guard available > 0 else {
                releaseExchange()  // idle: nothing of a request is here
                return
            }
            // Storage taken from the worker for this head is renewed already (when given back).
            let freshStorage = exchangeStorage == nil
            let limit = runtime.limits.maxHeadBytes
            let window = min(available, limit + 4)
            guard let bytes = evbuffer_pullup(input, window) else { return }
            let buffer = UnsafeRawBufferPointer(start: bytes, count: window)
            var head = RequestHead()
            let headLength: Int
            do {
                guard let length = try HeadParser.headLength(buffer, limit: limit, resuming: &headScan) else {
                    if available >= limit { throw HTTPParseError.headTooLarge(limit: limit) }
                    perform(machine.headIncomplete())
                    return
                }
                headScan = HeadParser.Scan()
                head = exchange.takeRequestHead()
                try HeadParser.parseRequest(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), into: &head, limits: runtime.limits)
                headLength = length
            } catch {
                headScan = HeadParser.Scan()
                exchange = Exchange()
                startRecord(method: "-", target: nil)
                var parseError = (error as? HTTPParseError) ?? .invalidRequestLine
                if case .headTooLarge = parseError, let bytes = evbuffer_pullup(input, window) {
                    parseError = HeadParser.oversizedRequestError(UnsafeRawBufferPointer(start: bytes, count: window), limit: limit)
                }
                finish(.answered(.badRequest(parseError), close: true))
                return
            }
            evbuffer_drain(input, headLength)
            startExchange(head, freshStorage: freshStorage)
        }
    }

    private func answerRequestTimeout(_ why: ConnectionStateMachine<SystemClock>.RequestTimeout) {
        let details: String
        switch why {
        case .head:
            details = "the request head did not arrive within client_timeout \(runtime.config.proxy.clientTimeout)"
        case .headTrickled:
            details = "the request head did not arrive within header_timeout \(runtime.config.proxy.headerTimeout)"
        case .body:
            details = "the request body stalled: nothing arrived for client_timeout \(runtime.config.proxy.clientTimeout)"
        }
        if !exchange.isRecording { startRecord(method: "-", target: nil) }
        // Part of the request may have gone upstream: `finish` closes that connection, which can carry nothing else.
        finish(.answered(ProxyErrorResponse(status: 408, errorType: .httpRequestError, details: details), close: true))
    }

    private func startRecord(method: String, target: AbsoluteTarget?) {
        exchange.startMicros = monotonicMicros()
        exchange.record = AccessRecord()
        exchange.record.startEpochMillis = currentEpochMillis()
        exchange.record.client = peer
        switch kind {
        case .forward: break
        case .fixed(let listener): exchange.record.listener = listener.configKey
        case .intercepted: exchange.record.intercepted = true
        case .plainTunnel: exchange.record.tunnel = "plain"
        }
        exchange.record.method = method
        if let target {
            exchange.record.scheme = target.scheme
            exchange.record.host = target.host
            exchange.record.path = String(target.path)
        }
    }

    private func startExchange(_ head: RequestHead, freshStorage: Bool) {
        if !freshStorage { exchange.renew() }
        exchange.request = head
        startRecord(method: head.method, target: nil)
        let framing = Result { try BodyFraming.forRequest(head) }
        exchange.requestBody = Exchange.RequestBody(framing)
        machine.headParsed(keepAlive: head.wantsKeepAlive && !worker.draining)
        // Proxy credentials: a bcrypt check runs off the loop and the exchange resumes in `authenticationFinished`;
        // meanwhile the machine is `exchanging` with no upstream, so arriving body bytes stay in the input.
        if case .forward = kind, let authenticator = worker.authenticator {
            let outcome = authenticator.check(head.headers.first("Proxy-Authorization"), peer: peer, worker: worker) { [weak self] in
                self?.authenticationFinished(head, framing, $0)
            }
            guard let outcome else { return }
            guard outcome == .allowed else { refuseAuthentication(head, framing, outcome); return }
        }
        decideExchange(head, framing)
    }

    /// The answer of an off-loop credential check, on this loop.
    private func authenticationFinished(_ head: RequestHead, _ framing: Result<BodyFraming, any Error>, _ outcome: AuthOutcome) {
        guard !finished, machine.isExchanging, upstream == nil, exchange.request != nil else { return }
        guard outcome == .allowed else { refuseAuthentication(head, framing, outcome); return }
        decideExchange(head, framing)
        // Body bytes that arrived during the check.
        if upstream != nil, evbuffer_get_length(input) > 0 { pumpRequestBody() }
    }

    private func refuseAuthentication(_ head: RequestHead, _ framing: Result<BodyFraming, any Error>, _ outcome: AuthOutcome) {
        let hasBody = (try? framing.get()).map { $0 != .none } ?? true
        let (response, headers) = outcome.refusal(credentialsSent: head.headers.contains("Proxy-Authorization"))
        finish(.answered(response, close: hasBody || head.method == "CONNECT" || outcome != .denied, extraHeaders: headers))
    }

    private func decideExchange(_ head: RequestHead, _ framing: Result<BodyFraming, any Error>) {
        switch RequestDecision.decide(head, framing: framing, kind: kind, runtime: runtime, exchange: &exchange) {
        case .answer(let response, let close, let extraHeaders):
            finish(.answered(response, close: close, extraHeaders: extraHeaders))
        case .tunnel:
            startTunnel(head)
        case .forward(let key, let context):
            guard attachUpstream(key: key, context: context, timeouts: exchange.match?.timeouts ?? runtime.config.upstream.timeouts) else { return }
            pumpRequestBody()
        }
    }

    /// Takes the upstream side for `key` (a pooled connection, or a new one) and queues the request head on it.
    private func attachUpstream(key: PoolKey, context: ClientTLSContext, timeouts: Timeouts) -> Bool {
        guard let upstream = worker.upstreamChannel(key: key, context: context, connectTimeout: timeouts.connect,
                                                    allowPrivate: exchange.match?.allowPrivate ?? false, route: exchange.match) else {
            finish(.answered(ProxyErrorResponse(status: 502, errorType: .proxyInternalError,
                                                details: "could not start a connection to \(key.host):\(key.port)"), close: true))
            return false
        }
        self.upstream = upstream
        upstream.owner = self
        upstream.describeConnection(into: &exchange.record)
        upstreamReadPaused = false
        exchange.upstreamRequestHead.withUnsafeBytes { _ = evbuffer_add(upstream.requestBuffer, $0.baseAddress, $0.count) }
        if upstream.state == .ready {
            upstream.setResponseTimeout(timeouts.response)
            upstream.receiveResponse(true)
        }
        return true
    }

    // MARK: request body

    private func pumpRequestBody() {
        guard machine.isExchanging, let upstream, upstream.state != .closed else { return }
        switch exchange.stepRequest(from: input, to: upstream.requestBuffer, highWatermark: Worker.writeHighWatermark) {
        case .wait, .complete:
            // Pipelined requests wait in the input buffer until this exchange ends (bounded by the read
            // watermark). Reading stays enabled: toggling it per request costs two epoll_ctl calls. Once the
            // request is complete, a client_timeout ends nothing (the machine reads that from the exchange).
            break
        case .pauseClient:
            clientReadPaused = true
            client.disableRead()
        case .fail(let response):
            // Part of the body may already be upstream: this exchange cannot be saved.
            finish(.failed(response))
        }
    }

    // MARK: upstream events

    func upstreamConnected(_ upstream: any UpstreamChannel) {
        upstream.describeConnection(into: &exchange.record)
        upstream.setResponseTimeout(exchange.match?.timeouts.response)
    }

    func upstreamWritable(_ upstream: any UpstreamChannel) {
        if clientReadPaused && upstream.unsentRequestBytes <= Worker.writeLowWatermark {
            clientReadPaused = false
            client.enableRead()
            pumpRequestBody()
        }
    }

    func upstreamReadable(_ upstream: any UpstreamChannel) {
        pumpResponse()
    }

    func upstreamEnded(_ upstream: any UpstreamChannel, _ event: UpstreamEvent) {
        switch exchange.upstreamEnded(event, output: output) {
        case .failedBeforeResponse:
            if retryOnFreshConnection(after: event) { return }
            let failure = upstream.failure(for: event, timeouts: exchange.match?.timeouts ?? runtime.config.upstream.timeouts)
            worker.metrics.countFailure(failure.metricReason)
            if failure.warn { worker.logger.warning("refused: \(failure.response.details)") }
            finish(.failed(failure.response))
        case .complete:
            finish(.completed)
        case .truncate(let why):
            finish(.truncated(why))
        case .closeUpstream:
            self.upstream = nil
            upstream.abort()
        }
    }

    /// A pooled connection may have been closed by the server just as we reused it. An idempotent request with
    /// no body is then tried once more on a fresh connection; anything else is reported.
    private func retryOnFreshConnection(after event: UpstreamEvent) -> Bool {
        guard let upstream, let match = exchange.match,
              exchange.mayRetry(requestUnprocessed: upstream.requestMayBeUnprocessed(after: event)) else { return false }
        exchange.retried = true
        let key = upstream.key
        let context = upstream.context
        self.upstream = nil
        upstream.abort()
        guard let fresh = worker.upstreamChannel(key: key, context: context, connectTimeout: match.timeouts.connect,
                                                 allowPrivate: match.allowPrivate, fresh: true, route: match) else { return false }
        exchange.response = .awaitingHead(HeadParser.Scan())
        self.upstream = fresh
        fresh.owner = self
        fresh.describeConnection(into: &exchange.record)
        exchange.upstreamRequestHead.withUnsafeBytes { _ = evbuffer_add(fresh.requestBuffer, $0.baseAddress, $0.count) }
        return true
    }

    // MARK: response

    private func pumpResponse() {
        guard machine.isExchanging, let upstream, upstream.state == .ready else { return }
        let source = upstream.responseBuffer
        while self.upstream === upstream {
            switch exchange.stepResponse(from: source, to: output, limits: runtime.limits, highWatermark: Worker.writeHighWatermark) {
            case .wait:
                return
            case .forwardInterim:
                // 100 Continue and other interim responses go to an HTTP/1.1 client as they are.
                guard let request = exchange.request, request.version == .http11 else { continue }
                let interim = Forwarding.clientResponse(exchange.responseHead, framing: .none, requestMethod: request.method,
                                                        keepAlive: true, clientVersion: request.version)
                interim.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
            case .switchProtocols(let upgrade):
                switchProtocols(exchange.responseHead, upgrade: upgrade)
                return
            case .sendFinalHead:
                sendFinalHead()
            case .pauseUpstream:
                upstreamReadPaused = true
                upstream.receiveResponse(false)
                return
            case .complete:
                finish(.completed)
                return
            case .fail(let response):
                finish(.failed(response))
                return
            case .truncate(let why):
                finish(.truncated(why))
                return
            }
        }
    }

    /// The final response head, as it goes to the client.
    private func sendFinalHead() {
        // The request's method and version, not the request (a copy would retain its buffers).
        guard let method = exchange.request?.method, let version = exchange.request?.version else { return }
        let head = exchange.responseHead  // copied: it is read while the client's head is written into the exchange
        // The rest of an unfinished request body has nowhere to go: this connection ends with the response.
        machine.responseKeepAlive(exchange.clientFraming != .close && exchange.requestBody.isDone)
        // Redirects stay on the proxy. The rewrite is made only for a head that has a field it rewrites: making it
        // costs more than the rest of the response head.
        let rewritesLocation = head.headers.contains("Location") || head.headers.contains("Content-Location")
        let locationRewrite = rewritesLocation ? exchange.request.flatMap { kind.locationRewrite(for: $0, runtime: runtime) } : nil
        Forwarding.clientResponse(head, framing: exchange.clientFraming, requestMethod: method,
                                  keepAlive: machine.flow?.keepAlive ?? false, clientVersion: version,
                                  locationRewrite: locationRewrite, into: &exchange.clientResponseHead)
        exchange.clientResponseHead.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
        if exchange.responseFraming == .untilClose, let upstream { upstream.setResponseTimeout(exchange.match?.timeouts.response) }
    }

    // MARK: upgrades

    /// After `101 Switching Protocols`: the head goes to the client, then bytes flow both ways between the
    /// client and this upstream connection until both directions end. The connection never returns to the pool.
    private func switchProtocols(_ head: ResponseHead, upgrade: String) {
        guard let request = exchange.request, let upstream else { return }
        exchange.record.upstreamStatus = 101
        exchange.record.status = 101
        exchange.record.ttfbMs = (monotonicMicros() - exchange.startMicros) / 1000
        machine.responseKeepAlive(false)
        let bytes = Forwarding.clientResponse(head, framing: .close, requestMethod: request.method, keepAlive: true,
                                              clientVersion: .http11, upgrade: head.headers.first("Upgrade") ?? upgrade)
        bytes.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
        let timeout = exchange.match?.timeouts.idle ?? runtime.config.upstream.timeouts.idle
        // The reference is dropped only once the hand-over succeeded: until then the connection is this one's to
        // close (`switchToRelay` ends it when it fails, and so would `teardown`).
        guard let detached = upstream.switchToRelay() else {
            teardown(reset: true)
            return
        }
        self.upstream = nil
        startRelay(with: detached, idleTimeout: timeout)
    }

    /// Hands the client's side and `other` to a relay; the access record is written when it ends.
    private func startRelay(with other: Endpoint, idleTimeout: TimeSpan) {
        machine.relayStarted()
        guard client.makeBufferevent(base: worker.base) else {
            other.free(reset: true)
            teardown(reset: true)
            return
        }
        mtls_bufferevent_set_timeouts_ms(client.bev, 0, 0)
        if let timer {
            event_free(timer)
            self.timer = nil
        }
        let startedIn = exchange.record.bytesIn, startedOut = exchange.record.bytesOut
        let relay = Relay(base: worker.base, client.handOver(), other, idleTimeout: idleTimeout) { [unowned self] fromClient, toClient in
            self.exchange.record.bytesIn = startedIn + fromClient
            self.exchange.record.bytesOut = startedOut + toClient
            self.finishRecord(proxyStatus: nil)
            self.relay = nil
            self.machine.relayEnded()
            if !self.finished {
                self.finished = true
                self.releaseExchange()
                self.worker.clientClosed(self)
            }
        }
        self.relay = relay
        relay.start()
    }

    // MARK: CONNECT

    /// CONNECT host:port: `TunnelSetup` decides; this carries the decision out.
    private func startTunnel(_ head: RequestHead) {
        let setup = TunnelSetup.decide(target: head.target, router: runtime.router,
                                       interceptionEnabled: runtime.localCA != nil && runtime.config.intercept != nil)
        exchange.record.describe(setup)
        exchange.match = setup.match
        switch setup.mode {
        case .refuse(let response):
            finish(.answered(response, close: true))
        case .blind:
            dialTunnel(host: setup.host, port: setup.port, match: setup.match!)
        case .open(let inside):
            openTunnel(OpenedTunnel(host: setup.host, port: setup.port, inside: inside))
        }
    }

    private func dialTunnel(host: String, port: Int, match: RouteMatch) {
        machine.tunnelDialling()
        client.disableRead()
        dialer = TunnelDialer(worker: worker, host: host, port: port, connect: match.connect, allowPrivate: match.allowPrivate,
                              timeout: match.timeouts.connect, egress: match.egress) {
            [unowned self] outcome in
            self.dialer = nil
            guard case .dialling = self.machine.state else {
                if case .connected(let b) = outcome { bufferevent_free(b) }
                return
            }
            if case .connected(let upstreamBev) = outcome {
                self.exchange.record.status = 200
                TunnelSetup.established.withUnsafeBytes { _ = evbuffer_add(self.output, $0.baseAddress, $0.count) }
                self.startRelay(with: Endpoint(bev: upstreamBev), idleTimeout: match.timeouts.idle)
            } else if let response = ConnectFailures.response(for: outcome, host: host, port: port, timeouts: match.timeouts) {
                self.finish(.answered(response, close: true))
            }
        }
        if dialer == nil, case .dialling = machine.state {
            finish(.answered(ProxyErrorResponse(status: 502, errorType: .proxyInternalError, details: "could not start a connection to \(host):\(port)"),
                             close: true))
        }
    }

    /// Answers 200 to a tunnel whose first bytes will say how it is served (`TunnelSetup.Inside`). What
    /// interception needs (a leaf minted for the host) is made first, so that a failure is still answered in HTTP.
    private func openTunnel(_ opened: OpenedTunnel) {
        var opened = opened
        if case .intercept = opened.inside.tls, let failure = opened.prepareInterception(worker: worker) {
            finish(.answered(failure, close: true))
            return
        }
        guard evbuffer_get_length(input) == 0 else {
            finish(.answered(ProxyErrorResponse(status: 400, errorType: .httpRequestError, details: "bytes after CONNECT before the tunnel was established"),
                             close: true))
            return
        }
        TunnelSetup.established.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
        exchange.record.status = 200
        openedTunnel = opened
        machine.tunnelOpened()
    }

    /// The client's first bytes inside an opened tunnel: a TLS ClientHello or a plain HTTP request.
    private func serveOpenedTunnel() {
        guard let opened = openedTunnel, evbuffer_get_length(input) > 0, let first = evbuffer_pullup(input, 1) else { return }
        openedTunnel = nil
        switch opened.inside.service(firstByte: first[0]) {
        case .intercept:
            intercept(opened)
        case .plainRequests:
            // The CONNECT itself is not logged; each request inside is, with "tunnel": "plain". No TLS layer:
            // the requests are read from the socket as on the forward listener.
            kind = .plainTunnel(host: opened.host)
            exchange = Exchange()
            machine.servingInsideTunnel()
            readHeads()
        case .refuse(let response, let answerInPlain):
            worker.logger.info("tunnel to \(opened.host):\(opened.port) from \(peer) closed: \(response.details)")
            if answerInPlain {
                finish(.answered(response, close: true))
            } else {
                // The client speaks TLS: an HTTP answer would mean nothing to it. The record says why.
                exchange.record.status = response.status
                finishRecord(proxyStatus: response.proxyStatusValue)
                perform(machine.exchangeEnded(keepAlive: false))
            }
        }
    }

    /// Terminates the client's TLS with the leaf minted for the tunnel's host, and serves the requests inside
    /// like any other: upstream verification, the route's identity, pooling.
    private func intercept(_ opened: OpenedTunnel) {
        guard opened.startTLS(on: &client, base: worker.base) else {
            worker.logger.info("intercepted tunnel to \(opened.host) from \(peer): TLS with the client could not be started")
            teardown(reset: false)
            return
        }
        // The CONNECT itself is not logged; each request inside is, with intercepted: true.
        kind = .intercepted(host: opened.host, port: opened.port)
        exchange = Exchange()
        machine.servingInsideTunnel()
        start()  // enabling the filter makes it read the ClientHello already in the socket's input
    }

    // MARK: ending an exchange

    /// How an exchange ends. `finish` is the one place that carries an ending out: the access record and the
    /// metrics, the upstream connection (pooled or closed), and the machine's next step.
    private enum Ending {
        /// The response is complete: the upstream goes back to the pool if nothing more can arrive on it.
        case completed
        /// An answer of the proxy's own (a refusal, a parse error, a timeout): any upstream connection is closed.
        case answered(ProxyErrorResponse, close: Bool, extraHeaders: [(String, String)] = [])
        /// The exchange failed midway (the upstream failed, or the request body turned out invalid): answered
        /// before any response byte went out, the client cut after.
        case failed(ProxyErrorResponse)
        /// The response was cut short (the upstream's fault, or invalid framing mid-body): the client is reset.
        case truncated(String)
    }

    private func finish(_ ending: Ending) {
        switch ending {
        case .completed:
            finishRecord(proxyStatus: nil)
            releaseUpstream(mayPool: true)
            perform(machine.exchangeEnded(keepAlive: true))
        case .answered(let response, let close, let extraHeaders):
            releaseUpstream(mayPool: false)
            let keepAlive = !close && (machine.flow?.keepAlive ?? true) && !worker.draining
            let bytes = response.serialize(version: .http11, closeConnection: !keepAlive, extraHeaders: extraHeaders)
            bytes.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
            exchange.record.status = response.status
            exchange.record.bytesOut += ProxyErrorResponse.bodyLength(ofSerialized: bytes)
            finishRecord(proxyStatus: response.proxyStatusValue)
            perform(machine.exchangeEnded(keepAlive: keepAlive))
        case .failed(let response):
            releaseUpstream(mayPool: false)
            let action = machine.upstreamFailed(exchange.progress)
            if action == .answerError {
                finish(.answered(response, close: !exchange.requestBody.isDone))
            } else {
                finishRecord(proxyStatus: response.proxyStatusValue)
                perform(action)
            }
        case .truncated(let why):
            finishRecord(proxyStatus: ProxyErrorResponse(status: 502, errorType: .httpResponseIncomplete, details: why).proxyStatusValue)
            releaseUpstream(mayPool: false)
            perform(machine.responseTruncated())
        }
    }

    /// Lets go of the exchange's upstream connection: back to the pool when `mayPool` and nothing more can arrive
    /// on it for this exchange, else closed.
    private func releaseUpstream(mayPool: Bool) {
        guard let upstream else { return }
        self.upstream = nil
        let reusable = mayPool && UpstreamReuse.mayPool(
            requestMethod: exchange.request?.method ?? "", status: exchange.record.upstreamStatus ?? 0,
            announcesBody: exchange.responseAnnouncedBody, closeDelimited: exchange.responseFraming == .untilClose,
            requestComplete: exchange.requestBody.isDone, upstreamAllows: exchange.upstreamAllowsReuse)
        upstream.finish(reusable: reusable, idleTimeout: exchange.match?.timeouts.idle ?? runtime.config.upstream.timeouts.idle)
    }

    private func finishRecord(proxyStatus: String?) {
        guard exchange.isRecording else { return }
        let micros = monotonicMicros() - exchange.startMicros
        exchange.record.durationMs = micros / 1000
        if let proxyStatus { exchange.record.proxyStatus = proxyStatus }
        worker.accessLog.write(exchange.record)
        let metrics = worker.metrics
        let record = exchange.record
        let route = record.route.isEmpty ? "-" : record.route
        metrics.countRequest(route: route, identity: record.identity, status: record.status)
        // The status page's last failure of the route: only failing requests pay for it (a lock, a copy).
        if let proxyStatus, record.status >= 500 {
            metrics.shared.statusBoard.recordFailure(route: route, status: record.status, proxyStatus: proxyStatus, at: currentEpochSeconds())
        }
        metrics.observeDuration(route: route, nanoseconds: Int64(micros) * 1000)
        metrics.shared.bytesIn.increment(by: Int64(record.bytesIn))
        metrics.shared.bytesOut.increment(by: Int64(record.bytesOut))
        exchange.startMicros = 0
    }
}
