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
    /// Unowned(unsafe). The rule: the worker outlives its connections (it tears them down, on its own thread,
    /// before it ends), checked in debug builds by `Worker.deinit`. Why not a checked `unowned`: each use then
    /// costs an atomic increment and decrement; with it here, on `UpstreamConnection.worker` and on
    /// `SocketStream.owner`, `scripts/bench --instructions-only` measured 51,420 instructions per forward request
    /// against 50,270 (+2.3 %), most of it from this one (13 uses per request).
    unowned(unsafe) let worker: Worker
    /// The client's side: its socket as a `SocketStream`, or (interception) the TLS filter over its bufferevent.
    @exclusivity(unchecked) var client: Endpoint
    let peer: String
    /// What the connection serves (forward, a sidecar's fixed upstream, the requests inside an intercepted or plain
    /// tunnel): the machine's, which changes it only when a tunnel's first bytes choose (`servingInsideTunnel`).
    var kind: ListenerKind { machine.serving }
    /// The connection's life. `@exclusivity(unchecked)` (here and on the other properties the data path reaches
    /// on every request): they are reached only from this connection's methods on the worker's thread, never
    /// while another access to them is under way, and the dynamic exclusivity check Swift makes on a class's
    /// stored property costs about 80 instructions per access (about 1,500 per request for the machine alone).
    @exclusivity(unchecked) var machine: Machine
    typealias Machine = ConnectionStateMachine<SystemClock, ClientTunnelResources>
    /// The exchange's storage, leased from the worker's `ExchangeStore` when a request's head is complete (or must
    /// be answered) and given back when the connection goes idle (`releaseExchange`, the one place it goes back):
    /// an idle connection holds none. The lease cannot be copied nor given back twice (`ExchangeLease`); one left
    /// here when the connection goes frees its storage. Reached through its pointer, the exchange skips the
    /// exclusivity checks too, for the same reason as the machine.
    @exclusivity(unchecked) private var lease: ExchangeLease?
    /// The exchange in progress. Only while the connection holds its lease (`holdExchange`): reaching it otherwise
    /// is a bug, and traps rather than taking storage behind the caller's back.
    var exchange: Exchange {
        @inline(__always) unsafeAddress { UnsafePointer(lease.storage!) }
        @inline(__always) unsafeMutableAddress { lease.storage! }
    }
    var holdsExchange: Bool { lease != nil }
    /// Leases the exchange's storage from the worker if the connection holds none. True when it took it (the
    /// storage comes renewed from the store); false when it held it already (the caller renews it).
    @discardableResult
    func holdExchange() -> Bool {
        guard lease == nil else { return false }
        lease = worker.exchanges.take()
        return true
    }
    /// Idle: the finished exchange's storage goes back to the worker.
    func releaseExchange() {
        guard let lease = lease.take() else { return }
        worker.exchanges.give(lease)
    }
    /// The exchange's upstream side (`UpstreamChannel`): this connection talks to it through that interface only.
    @exclusivity(unchecked) var upstream: (any UpstreamChannel)?
    // A tunnel's dialler, opened tunnel or relay is not kept here: it is the machine's state's payload
    // (`.dialling(dialer)`, `.awaitingTunnelBytes(opened)`, `.relaying(relay)`), handed back to be released.
    /// The connection's one timer: the head deadline, the flush poll under a TLS filter, the linger deadline.
    @exclusivity(unchecked) var timer: OpaquePointer?
    /// Set while the head loop runs: an exchange that ends inside it lets the loop parse the next head. Not the
    /// machine's: it says whether `readHeads` is on the call stack (a re-entrancy guard of the shell's loop), not
    /// where the connection's life stands; the machine is `awaitingHead` both inside the loop and outside it.
    @exclusivity(unchecked) var parsingHeads = false

    init(worker: Worker, stream: SocketStream, peer: String, kind: ListenerKind) {
        self.worker = worker
        self.client = Endpoint(stream: stream)
        self.peer = peer
        machine = Machine(clock: SystemClock(), serving: kind,
                                         headerTimeoutMillis: worker.runtime.config.proxy.headerTimeout.milliseconds,
                                         clientTimeoutMillis: worker.runtime.config.proxy.clientTimeout.milliseconds)
    }

    deinit {
        // Checked in debug builds: the client's stream holds this connection unowned(unsafe), so a connection
        // must let go of its side (`teardown`) before it goes.
        assert(client.isEmpty, "a client connection went without its teardown")
        // A lease still held (a teardown always gives it back) frees its storage as it goes.
    }

    /// How far the exchange in progress has got, for the machine; none between exchanges.
    var progress: ExchangeProgress { holdsExchange ? exchange.progress : .none }

    var input: OpaquePointer { client.input }
    var output: OpaquePointer { client.output }
    var runtime: ProxyRuntime { worker.runtime }

    func start() {
        client.start(handler: self, readTimeoutMillis: runtime.config.proxy.clientTimeout.milliseconds)
    }

    // MARK: carrying out the machine's actions

    func perform(_ action: Machine.Action) {
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

    func armTimer(inMillis ms: Int) {
        if timer == nil { timer = makeTimer(base: worker.base) }
        _ = mtls_evtimer_add_ms(timer, max(ms, 0))
    }

    /// Flushes every layer towards the client (close_notify included), then reports `flushed` to the machine.
    func continueFlush() {
        switch client.flushStep() {
        case .pending(let belowTop):
            // The top layer's drain comes as a write callback; a TLS filter's lower layer has none: poll it.
            if belowTop { armTimer(inMillis: 5) }
        case .shut:
            perform(machine.flushed())
        }
    }

    /// The one exit: frees everything this connection holds. `reset` when a response was cut short. Safe to
    /// enter again (a relay that ends comes back here): each resource is let go of once.
    func teardown(reset: Bool) {
        // The machine hands back what its state held; each resource is released here, once.
        let held = machine.aborted()
        if let upstream {
            self.upstream = nil
            upstream.abort()
        }
        if let timer {
            event_free(timer)
            self.timer = nil
        }
        switch held {
        case .relay(let relay):
            // The relay owns the client's side now; closing it frees both (its end comes back here, and finds
            // nothing more held).
            relay.close(reset: reset)
        case .dialer(let dialer):
            dialer.cancel()
            client.free(reset: reset)
        case .opened, .nothing:
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
            if machine.isPaused(.upstream) && evbuffer_get_length(output) <= Worker.writeLowWatermark {
                _ = machine.resumed(.upstream)
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
        let action: Machine.Action
        let stateBefore = machine.state
        let timedOut = flags & BEV_EVENT_TIMEOUT != 0 && flags & BEV_EVENT_ERROR == 0
        if case .intercepted = kind, flags & BEV_EVENT_ERROR != 0, machine.isAwaitingHead, client.tls?.handshakeFinished == false {
            action = machine.clientTLSFailed()
        } else if timedOut {
            action = machine.clientTimedOut(progress)
        } else if flags & BEV_EVENT_EOF != 0 && flags & BEV_EVENT_ERROR == 0 {
            action = machine.clientEOF(progress, tunnelBytesWaiting: evbuffer_get_length(input) > 0)
        } else {
            // An intercepted client's FIN without close_notify comes here (OpenSSL 3 reports it as an error), not
            // as an EOF as a relay takes it: here the proxy is that client's TLS endpoint and reads HTTP from it,
            // and a TLS stream that ends without close_notify may have been cut by someone else (RFC 8446 §6.1),
            // so it is not taken as a half-close after which a response is still owed. A relay only carries
            // bytes whose own protocol says where they end; the two ends judge a truncation there.
            action = machine.clientError()
        }
        if case .abort = action {
            finish(.clientGone(why: stateBefore.clientLoss(timedOut: timedOut), then: action))
        } else {
            perform(action)
        }
    }

    // MARK: upstream events

    func upstreamConnected(_ upstream: any UpstreamChannel) {
        upstream.describeConnection(into: &exchange.record)
        upstream.setResponseTimeout(exchange.match?.timeouts.response)
    }

    func upstreamWritable(_ upstream: any UpstreamChannel) {
        if machine.isPaused(.client) && upstream.unsentRequestBytes <= Worker.writeLowWatermark {
            _ = machine.resumed(.client)
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

    func upstreamReplaced(_ old: any UpstreamChannel, by new: any UpstreamChannel) {
        guard let current = upstream, current === old else {
            new.abort()
            return
        }
        upstream = new
        new.owner = self
        new.describeConnection(into: &exchange.record)
        if new.state == .ready {
            upstreamConnected(new)
            new.receiveResponse(true)
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
                exchange.writeInterimHead(to: output)
            case .switchProtocols(let upgrade):
                switchProtocols(upgrade: upgrade)
                return
            case .sendFinalHead:
                sendFinalHead()
            case .pauseUpstream:
                machine.paused(.upstream)
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
        // The rest of an unfinished request body has nowhere to go: this connection ends with the response.
        machine.responseKeepAlive(exchange.clientFraming != .close && exchange.requestBody.isDone)
        exchange.writeFinalHead(to: output, keepAlive: machine.flow?.keepAlive ?? false, kind: kind, runtime: runtime)
        if exchange.responseFraming == .untilClose, let upstream { upstream.setResponseTimeout(exchange.match?.timeouts.response) }
    }

    // MARK: ending an exchange

    /// How an exchange ends. `finish` is the one place that carries an ending out: the access record and the
    /// metrics, the upstream connection (pooled or closed), and the machine's next step.
    enum Ending {
        /// The response is complete: the upstream goes back to the pool if nothing more can arrive on it.
        case completed
        /// An answer of the proxy's own (a refusal, a parse error, a timeout): any upstream connection is closed.
        case answered(ProxyErrorResponse, close: Bool, extraHeaders: [(String, String)] = [])
        /// The exchange failed midway (the upstream failed, or the request body turned out invalid): answered
        /// before any response byte went out, the client cut after.
        case failed(ProxyErrorResponse)
        /// The response was cut short (the upstream's fault, or invalid framing mid-body): the client is reset.
        case truncated(String)
        /// The client went away (EOF, error, client_timeout) with nothing more deliverable: recorded, and the
        /// connection ends as the machine said (`then`).
        case clientGone(why: String, then: Machine.Action)
        /// A tunnel refused where no HTTP answer can go (the client speaks TLS inside it): recorded, then closed.
        case refusedWithoutAnswer(ProxyErrorResponse)
        /// A relay (tunnel or upgrade) ended after carrying these bytes: recorded, then the connection ends.
        case relayed(fromClient: Int, toClient: Int)
    }

    func finish(_ ending: Ending) {
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
            switch machine.exchangeFailed(exchange.progress) {
            case .answer:
                finish(.answered(response, close: !exchange.requestBody.isDone))
            case .abort(let reset):
                finishRecord(proxyStatus: response.proxyStatusValue)
                teardown(reset: reset)
            case .none:
                finishRecord(proxyStatus: response.proxyStatusValue)
            }
        case .truncated(let why):
            finishRecord(proxyStatus: ProxyErrorResponse(status: 502, errorType: .httpResponseIncomplete, details: why).proxyStatusValue)
            releaseUpstream(mayPool: false)
            perform(machine.responseTruncated())
        case .clientGone(let why, let action):
            if holdsExchange, exchange.isRecording {
                // The status is 499 only when nothing was answered yet (status 0): once a response began, the record
                // keeps the status the client was sent, and proxy_status says the response was cut.
                if exchange.record.status == 0 { exchange.record.status = 499 }
                finishRecord(proxyStatus: why)
            }
            perform(action)
        case .refusedWithoutAnswer(let response):
            exchange.record.status = response.status
            finishRecord(proxyStatus: response.proxyStatusValue)
            perform(machine.exchangeEnded(keepAlive: false))
        case .relayed(let fromClient, let toClient):
            // The relay counted only its own bytes: the CONNECT's or the upgrade's head came before.
            exchange.record.bytesIn += fromClient
            exchange.record.bytesOut += toClient
            finishRecord(proxyStatus: nil)
            teardown(reset: false)
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
        worker.closeRecord(of: &exchange, proxyStatus: proxyStatus)
    }
}
