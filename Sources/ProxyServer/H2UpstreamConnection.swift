import CEventTLS
import HTTP1
import HTTP2
import ProxyConfig
import TLS

/// One HTTP/2 connection to an upstream server, carrying many exchanges as streams. The socket, the TLS
/// handshake (with ALPN `h2`), the corporate-proxy hop and the SSRF guard are an `UpstreamConnection`'s
/// (`transport`), whose owner this is; the framing is an `H2ClientSession`'s, fed from the transport's input
/// and writing into its output. Each exchange holds an `H2UpstreamStream`. The connection belongs to one
/// `PoolKey` (host, port, dialled address, TLS context i.e. identity, SNI, egress path), never to another, whatever
/// RFC 9113 connection coalescing would allow; `H2Pool` keeps it while it lives.
final class H2UpstreamConnection: EventHandler, UpstreamChannelOwner, H2ClientSessionDelegate {
    let key: PoolKey
    let transport: UpstreamConnection
    unowned(unsafe) let worker: Worker
    private(set) var session: H2ClientSession?
    // `@exclusivity(unchecked)` on what every request reaches: only the worker's thread touches it, never during
    // another access to it (the translation buffers are lent by moving them out, see `withScratch`).
    /// Streams opened on the session, by id.
    @exclusivity(unchecked) private var streams: [Int32: H2UpstreamStream] = [:]
    /// Streams attached before the session was up, or whose request head has not arrived yet.
    @exclusivity(unchecked) private var starting: [H2UpstreamStream] = []
    /// The buffers heads are translated in, reused (lent out by `withScratch`).
    @exclusivity(unchecked) private var scratch = H2TranslationScratch()
    /// Runs `work()` once the current callback has returned: streams' request bytes, window updates, output.
    private var workTimer: OpaquePointer?
    @exclusivity(unchecked) private var workScheduled = false
    /// Inside `session.receive`: output is flushed after it.
    @exclusivity(unchecked) private var receiving = false
    /// Streams whose exchange ended inside `session.receive` before their END_STREAM was seen: reset after it,
    /// if still open then. An exchange usually ends on the last DATA of its response, a moment before nghttp2
    /// reports the END_STREAM that came in the same frame; cancelling it then would reset every complete stream.
    @exclusivity(unchecked) private var cancelAfterReceive: [Int32] = []
    /// GOAWAY received (or sent): no new streams.
    private(set) var goingAway = false
    private(set) var closed = false
    /// Streams this connection carried, for the metrics and the log.
    private(set) var streamsOpened = 0
    /// What ended the connection, reported to every stream still on it.
    private(set) var failure: H2StreamFailure?
    /// The route whose exchange opened the connection: its connection-wide metrics (connections, GOAWAYs, protocol
    /// errors, PING timeouts) and log lines carry it; a stream's own metrics carry the stream's route.
    let routeLabel: String
    /// Called once when the connection closes or goes away (the pool drops it).
    var onClose: ((H2UpstreamConnection) -> Void)?
    /// Called when a stream may start here again (one ended, or the server's SETTINGS arrived).
    var onCapacity: ((H2UpstreamConnection) -> Void)?
    /// Called with streams attached here before the server's SETTINGS said it takes fewer: placed again.
    var onOverflow: ((H2UpstreamStream) -> Void)?
    /// The server's first SETTINGS arrived: streams open only after it (its limits are known then).
    private var settingsReceived = false
    /// How long the connection stays open with no stream.
    let idleTimeout: TimeSpan
    /// When an idle connection is sent a PING, retired for not answering it, or closed for idleness.
    private var liveness: H2Liveness
    /// Fires at `liveness.deadline`.
    private var livenessTimer: OpaquePointer?
    /// How long the server has, once the handshake is done, to send its SETTINGS (the connect timeout): streams
    /// wait for them, so a server that never sends them must not hold its exchanges for ever.
    let settingsTimeout: TimeSpan

    /// The most streams the proxy opens at once on one connection, whatever the server allows.
    static let streamCeiling = 100

    init(key: PoolKey, transport: UpstreamConnection, worker: Worker, routeLabel: String, idleTimeout: TimeSpan,
         settingsTimeout: TimeSpan, pingInterval: TimeSpan? = nil, pingTimeout: TimeSpan = Timeouts.defaultH2PingTimeout) {
        self.idleTimeout = idleTimeout
        liveness = H2Liveness(pingInterval: pingInterval?.milliseconds, pingTimeout: pingTimeout.milliseconds,
                              idleTimeout: idleTimeout.milliseconds, now: monotonicMicros() / 1000)
        self.settingsTimeout = settingsTimeout
        self.key = key
        self.transport = transport
        self.worker = worker
        self.routeLabel = routeLabel
        super.init()
        transport.owner = self
        workTimer = makeTimer(base: worker.base)
        livenessTimer = makeTimer(base: worker.base)
    }

    deinit {
        if let workTimer { event_free(workTimer) }
        if let livenessTimer { event_free(livenessTimer) }
    }

    /// Streams open or about to open.
    var load: Int { streams.count + starting.count }

    /// The streams the server takes at once (SETTINGS_MAX_CONCURRENT_STREAMS), capped by `streamCeiling`.
    var streamLimit: Int {
        guard let session else { return Self.streamCeiling }
        return Int(min(UInt32(Self.streamCeiling), session.serverMaxConcurrentStreams))
    }

    /// Whether another exchange may start here now.
    var hasCapacity: Bool { !closed && !goingAway && load < streamLimit }

    /// Whether the session is up (ALPN said h2 and the preface went out).
    var isReady: Bool { session != nil && !closed }

    /// A `crl_fetch` route's connection verified before the last CRL arrived takes no new stream (as an HTTP/1.1
    /// one is not reused): it leaves the pool, those in flight finish, and the next exchange opens a connection
    /// that verifies the server against the new CRL. True when it was retired.
    func retireIfVerifiedBeforeNewCRL() -> Bool {
        guard !closed, !goingAway, transport.verifiedBeforeNewCRL else { return false }
        goingAway = true
        let handler = onClose
        onClose = nil
        handler?(self)
        scheduleWork()
        closeIfDone()
        return true
    }

    // MARK: streams

    func attach(_ stream: H2UpstreamStream) {
        stream.connection = self
        starting.append(stream)
        if isReady && settingsReceived { transport.setReadTimeout(nil) }
        if liveness.isIdle {
            liveness.busy()
            armLiveness()
        }
        if let failure {
            stream.connectionFailed(failure)
            return
        }
        stream.servedBefore = streamsOpened > 0
        if isReady { stream.connectionReady() }
        scheduleWork()
    }

    /// The stream's exchange is over (completed, failed or abandoned): forget it; reset it if still open.
    func detach(_ stream: H2UpstreamStream) {
        starting.removeAll { $0 === stream }
        if stream.streamID > 0, streams[stream.streamID] === stream {
            if !stream.ended {
                if receiving { cancelAfterReceive.append(stream.streamID) } else { session?.reset(stream.streamID, errorCode: 0x8) }  // CANCEL
            }
            streams[stream.streamID] = nil
        }
        scheduleWork()
        closeIfDone()
        if !closed && load == 0 {
            liveness.idle(now: Self.now())
            armLiveness()
        }
        if hasCapacity { onCapacity?(self) }
    }

    /// Lends the translation buffers to `body`: moved out of the connection for the call, so that a call that
    /// comes back here meanwhile (an exchange ending inside it) finds empty ones rather than overlapping access.
    private func withScratch<R>(_ body: (inout H2TranslationScratch) -> R) -> R {
        var lent = H2TranslationScratch()
        swap(&lent, &scratch)
        defer { swap(&lent, &scratch) }
        return body(&lent)
    }

    func scheduleWork() {
        guard !workScheduled, !closed, let workTimer else { return }
        workScheduled = true
        // Made active rather than added with a 0 ms timeout: it runs in this loop turn all the same, without a
        // trip through the timeout heap.
        event_active(workTimer, EV_TIMEOUT, 1)
    }

    /// The work timer, or the liveness timer (both call here): work that is due runs, then a liveness deadline
    /// that passed is acted on.
    override func timerFired() {
        if workScheduled {
            workScheduled = false
            if let workTimer { event_del(workTimer) }
            work()
        }
        livenessDue()
    }

    static func now() -> Int { monotonicMicros() / 1000 }

    /// Arms the liveness timer for the machine's next deadline (once the server's SETTINGS are in: until then the
    /// wait for them is the transport's read timeout).
    private func armLiveness() {
        guard let livenessTimer, !closed else { return }
        guard settingsReceived, let deadline = liveness.deadline else {
            event_del(livenessTimer)
            return
        }
        _ = mtls_evtimer_add_ms(livenessTimer, max(0, deadline - Self.now()))
    }

    private func livenessDue() {
        guard !closed, settingsReceived, let deadline = liveness.deadline else { return }
        let now = Self.now()
        guard now >= deadline else { return armLiveness() }
        switch liveness.timerFired(now: now) {
        case .nothing:
            armLiveness()
        case .sendPing:
            session?.ping()
            flush()
            armLiveness()
        case .closeIdle:
            close()
        case .retire:
            retireUnanswered()
        }
    }

    /// The server did not answer a PING in time: the connection is taken out of the pool and closed; streams that
    /// waited for the answer go to another connection (nothing of them was sent), any open one fails as on a
    /// connection that went silent.
    private func retireUnanswered() {
        guard !closed else { return }
        worker.metrics.countH2(.pingTimeouts, route: routeLabel)
        worker.logger.warning("upstream \(key.host):\(key.port) (\(routeLabel)): the HTTP/2 connection did not answer a PING within \(liveness.pingTimeout) ms; connection closed, the next request opens another")
        goingAway = true
        let handler = onClose
        onClose = nil
        handler?(self)  // out of the pool first: the waiting streams must not come back here
        moveUnopened(with: onOverflow)
        fail(.connection(.readTimeout), why: nil)
    }

    /// Streams attached here that never opened (nothing of them went out, whatever their method or body) go to
    /// another connection of the key, through `replace` (the pool's). The connection must be out of the pool.
    private func moveUnopened(with replace: ((H2UpstreamStream) -> Void)?) {
        guard let replace else { return }
        let unopened = starting.filter { $0.streamID == 0 }
        guard !unopened.isEmpty else { return }
        starting.removeAll { $0.streamID == 0 }
        for stream in unopened {
            stream.connection = nil
            replace(stream)
        }
    }

    /// Moves what the streams' exchanges queued into the session, gives back the windows their clients freed,
    /// and writes the frames.
    private func work() {
        guard !closed, let session, settingsReceived else { return }
        // A connection with no stream open checks that the server is there before one opens on it (docs/http2.md).
        if streams.isEmpty && !starting.isEmpty {
            switch liveness.admit(now: Self.now()) {
            case .open: break
            case .wait:
                flush()
                return
            case .ping:
                session.ping()
                armLiveness()
                flush()
                return
            }
        }
        for stream in starting where stream.connection === self && streams.count < streamLimit {
            guard let id = withScratch({ stream.startIfHeadReady(on: session, scratch: &$0) }) else { continue }
            streams[id] = stream
            streamsOpened += 1
            worker.metrics.countH2(.streams, route: stream.routeLabel)
        }
        starting.removeAll { $0.streamID > 0 || $0.connection !== self }
        // Over the dictionary as it is now: a stream that ends meanwhile changes a copy, not this walk.
        for stream in streams.values { stream.pumpRequest(session) }
        for stream in streams.values { stream.giveBackWindow(session) }
        flush()
    }

    /// Writes what the session has to say into the transport.
    func flush() {
        guard !closed, let session, !receiving else { return }
        let output = transport.output
        do {
            try session.send { bytes in _ = evbuffer_add(output, bytes.baseAddress, bytes.count) }
        } catch {
            fail(.protocolError("HTTP/2 session: \(error)"), why: nil)
            return
        }
        if checkSessionEnded(session) { return }
        closeIfDone()
    }

    /// nghttp2 ends a session by itself when the server breaks the protocol in a way that is not a read error
    /// (a PUSH_PROMISE after SETTINGS_ENABLE_PUSH = 0, a header block it cannot decode): it sends GOAWAY and stops.
    /// The connection then closes and its streams fail; true when that happened.
    private func checkSessionEnded(_ session: H2ClientSession) -> Bool {
        guard !session.isAlive || session.sentGoAwayCode.map({ $0 != 0 }) == true else { return false }
        if load == 0 && session.sentGoAwayCode == nil {
            close()
            return true
        }
        let code = session.sentGoAwayCode.map { H2ClientSession.errorName($0) } ?? "the session ended"
        worker.metrics.countH2(.protocolErrors, route: routeLabel)
        let why = "the upstream broke HTTP/2 (GOAWAY \(code) sent)"
        fail(.protocolError(why), why: why)
        return true
    }

    private func closeIfDone() {
        guard !closed, goingAway, streams.isEmpty, starting.isEmpty else { return }
        close()
    }

    /// Streams attached while the server's limit was not known, beyond it now: they go back to the pool, which
    /// puts them on another connection of the key (up to `h2_connections`) or makes them wait.
    private func rebalance() {
        let excess = load - streamLimit
        guard excess > 0 else { return }
        let moved = Array(starting.filter { $0.streamID == 0 }.suffix(excess))
        guard !moved.isEmpty else { return }
        starting.removeAll { stream in moved.contains { $0 === stream } }
        for stream in moved {
            stream.connection = nil
            onOverflow?(stream)
        }
    }

    // MARK: transport events

    func upstreamConnected(_ channel: any UpstreamChannel) {
        withExtendedLifetime(self) { sessionStarts() }
    }

    /// The handshake is done: h2 selected starts the session, anything else fails the waiting exchanges.
    private func sessionStarts() {
        guard transport.selectedApplicationProtocol == "h2" else {
            // `protocol = "auto"`: the server is remembered as HTTP/1.1 and every waiting exchange goes over
            // HTTP/1.1 (none of it was sent yet); `protocol = "h2"`: the server must select h2, they are answered 502.
            if key.httpProtocol == .auto {
                worker.h2Pool.learnHTTP11(key)
                handOverToHTTP11()
            } else {
                fail(.alpnRefused(selected: transport.selectedApplicationProtocol), why: nil)
            }
            return
        }
        do {
            let made = try H2ClientSession()
            made.delegate = self
            session = made
        } catch {
            fail(.protocolError("HTTP/2 session: \(error)"), why: nil)
            return
        }
        worker.metrics.countH2(.connections, route: routeLabel)
        // Until the server's SETTINGS arrive, the wait for them is bounded by the connect timeout.
        transport.setReadTimeout(settingsTimeout)
        transport.enableRead(true)
        for stream in starting { stream.connectionReady() }
        // The server's SETTINGS (its limits) often came with the end of the handshake: read them before the
        // first streams open.
        if evbuffer_get_length(transport.input) > 0 { readFrames() } else { work() }
    }

    /// `protocol = "auto"` and the server selected HTTP/1.1 (or nothing): nothing of the waiting exchanges went
    /// out, so each goes over HTTP/1.1 as it stands, its queued request bytes with it: the first on this very TLS
    /// connection, the others on HTTP/1.1 connections of their own (pooled or new). This connection is over.
    private func handOverToHTTP11() {
        let waiting = starting + Array(streams.values)
        starting.removeAll()
        streams.removeAll()
        closed = true
        goingAway = true
        if let workTimer { event_del(workTimer) }
        if let livenessTimer { event_del(livenessTimer) }
        let handler = onClose
        onClose = nil
        onCapacity = nil
        onOverflow = nil
        handler?(self)
        transport.owner = nil
        var transportTaken = false
        for stream in waiting {
            stream.connection = nil
            if !transportTaken, stream.handOver(to: transport) {
                transportTaken = true
                continue
            }
            guard let channel = worker.upstreamChannel(key: key, context: stream.context, connectTimeout: stream.timeouts.connect,
                                                       allowPrivate: stream.allowPrivate) else {
                stream.connectionFailed(.serverSpeaksHTTP11)
                continue
            }
            if !stream.handOver(to: channel) {
                channel.abort()
                stream.connectionFailed(.serverSpeaksHTTP11)
            }
        }
        if !transportTaken { transport.close() }
    }

    func upstreamReadable(_ channel: any UpstreamChannel) {
        withExtendedLifetime(self) { readFrames() }
    }

    /// Feeds what the transport received to the session; the streams hear their events from it.
    private func readFrames() {
        guard let session, !closed else { return }
        let input = transport.input
        if evbuffer_get_length(input) > 0 {
            liveness.heard(now: Self.now())
            armLiveness()
        }
        receiving = true
        var failed: H2SessionFailure?
        withExtendedLifetime(self) {
            while !closed, evbuffer_get_length(input) > 0 {
                let n = evbuffer_get_contiguous_space(input)
                guard let p = evbuffer_pullup(input, n) else { break }
                do {
                    try session.receive(UnsafeRawBufferPointer(start: p, count: n))
                } catch let e as H2SessionFailure {
                    failed = e
                    break
                } catch {
                    break
                }
                evbuffer_drain(input, n)
            }
        }
        receiving = false
        // Those the server did not end meanwhile are cancelled (`reset` leaves closed streams alone).
        for id in cancelAfterReceive { session.reset(id, errorCode: 0x8) }
        cancelAfterReceive.removeAll(keepingCapacity: true)
        if let failed {
            // Whatever nghttp2 queued (GOAWAY with the error) goes out before the close.
            try? session.send { bytes in _ = evbuffer_add(self.transport.output, bytes.baseAddress, bytes.count) }
            worker.metrics.countH2(.protocolErrors, route: routeLabel)
            fail(.protocolError("the upstream broke HTTP/2: \(failed.message)"), why: "the upstream broke HTTP/2: \(failed.message)")
            return
        }
        work()
    }

    func upstreamWritable(_ channel: any UpstreamChannel) {
        scheduleWork()
    }

    func upstreamEnded(_ channel: any UpstreamChannel, _ event: UpstreamEvent) {
        withExtendedLifetime(self) {
            if session != nil, !settingsReceived, case .readTimeout = event {
                let why = "the upstream sent no HTTP/2 SETTINGS within the connect timeout (\(settingsTimeout.milliseconds) ms) after the TLS handshake"
                worker.metrics.countH2(.protocolErrors, route: routeLabel)
                fail(.protocolError(why), why: why)
                return
            }
            fail(.connection(event), why: nil)
        }
    }

    /// The connection is gone: streams that had no response head yet fail with `event` (or are retried when
    /// the server never processed them), the others are truncated.
    private func fail(_ event: H2StreamFailure, why: String?) {
        guard !closed else { return }
        if let why { worker.logger.warning("upstream \(key.host):\(key.port) (\(routeLabel)): \(why); connection closed") }
        // A pooled connection (it carried streams) that ends while streams wait to open on it (for a PING's
        // answer, or for their turn): those go to another connection, as on a retirement. Not on a connection that
        // never carried a stream, so that a server that fails every connection cannot keep them moving.
        if case .connection = event, streamsOpened > 0, starting.contains(where: { $0.streamID == 0 }) {
            let replace = onOverflow
            goingAway = true
            let handler = onClose
            onClose = nil
            handler?(self)
            moveUnopened(with: replace)
        }
        failure = event
        let all = starting + Array(streams.values)
        starting.removeAll()
        streams.removeAll()
        close()
        for stream in all { stream.connectionFailed(event) }
    }

    func close() {
        guard !closed else { return }
        closed = true
        goingAway = true
        if let workTimer { event_del(workTimer) }
        if let livenessTimer { event_del(livenessTimer) }
        transport.owner = nil
        transport.close()
        let remaining = starting + Array(streams.values)
        starting.removeAll()
        streams.removeAll()
        for stream in remaining { stream.connectionFailed(failure ?? .connection(.eof(closeNotify: false))) }
        onClose?(self)
        onClose = nil
        onCapacity = nil
        onOverflow = nil
    }

    // MARK: session events

    /// Each stream is held for the length of its event: its exchange may end (and let go of it) meanwhile.
    func h2Event(_ event: H2Event) {
        switch event {
        case .informational(let id, let fields):
            if let stream = streams[id] { withExtendedLifetime(stream) { withScratch { stream.informational(fields, scratch: &$0) } } }
        case .response(let id, let fields, let endStream):
            if let stream = streams[id] { withExtendedLifetime(stream) { withScratch { stream.response(fields, endStream: endStream, scratch: &$0) } } }
        case .data(let id, let bytes):
            if let stream = streams[id] { withExtendedLifetime(stream) { stream.data(bytes) } }
        case .trailers(let id, let fields):
            streams[id]?.trailers(fields)
        case .responseEnded(let id):
            if let stream = streams[id] { withExtendedLifetime(stream) { stream.responseEnded() } }
        case .closed(let id, let code):
            guard let stream = streams.removeValue(forKey: id) else { return }
            if code != 0 { worker.metrics.countH2(.resets, route: stream.routeLabel) }
            if code == 0x7 && !stream.responseHeadSeen { worker.h2Pool.streamRefused(on: self) }  // REFUSED_STREAM
            withExtendedLifetime(stream) { stream.closed(errorCode: code) }
        case .goAway(let last, let code):
            goingAway = true
            worker.metrics.countH2(.goAways, route: routeLabel)
            worker.logger.info("upstream \(key.host):\(key.port) (\(routeLabel)): GOAWAY \(H2ClientSession.errorName(code)), last stream \(last)")
            for stream in streams.values where stream.streamID <= last { stream.goAwayReceived = code }
            onClose?(self)  // out of the pool: no new streams here
            onClose = nil
            // Streams that had not opened yet (waiting for a PING's answer, say) cannot open here any more: they
            // go to another connection whatever their method or body, rather than being refused by nghttp2. Only
            // from a connection that carried streams: a server that sends GOAWAY with its first SETTINGS on every
            // connection would otherwise have them move from new connection to new connection for ever (they
            // are refused here instead, and the exchange's retry rule decides).
            if streamsOpened > 0 { moveUnopened(with: onOverflow) }
        case .settings:
            let first = !settingsReceived
            settingsReceived = true
            rebalance()
            // The wait for SETTINGS is over: the connection idles (its liveness timer runs), or carries streams
            // with their own timers.
            if first && !closed {
                transport.setReadTimeout(nil)
                liveness.heard(now: Self.now())
                if load == 0 { liveness.idle(now: Self.now()) } else { liveness.busy() }
                armLiveness()
            }
            if hasCapacity { onCapacity?(self) }
        }
    }
}
