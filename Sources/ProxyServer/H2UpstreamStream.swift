import CEventTLS
import HTTP1
import HTTP2
import ProxyConfig
import TLS

/// Why an HTTP/2 stream ended without a complete response.
enum H2StreamFailure {
    /// The connection under it failed (connect, TLS, EOF, timeout...): as an HTTP/1.1 connection's event.
    case connection(UpstreamEvent)
    /// `protocol = "h2"` and the server selected something else in ALPN (or nothing).
    case alpnRefused(selected: String?)
    /// The server reset the stream (RST_STREAM) with this HTTP/2 error code, or nghttp2 did for a protocol
    /// error of the server on this stream (a short body against Content-Length, a malformed head).
    case reset(UInt32)
    /// The connection broke HTTP/2 (a flood, an oversized header list, a push the proxy refused...).
    case protocolError(String)
    /// The response head could not be turned into an HTTP/1.1 one.
    case badResponseHead(String)
    /// The request head is larger than the server's SETTINGS_MAX_HEADER_LIST_SIZE.
    case requestHeadTooLarge(size: Int, limit: UInt32)
    /// The stream's response timeout passed.
    case timeout
    /// It waited for a free stream longer than the connect timeout (every connection of its key was full).
    case queueTimeout
    /// Every connection of its key was full and so was the wait (`H2Pool.maxWaitingPerKey`).
    case queueFull
    /// `protocol = "auto"` and the server selected HTTP/1.1: the exchange may be retried over HTTP/1.1.
    case serverSpeaksHTTP11

    /// How the exchange hears it (`Exchange.upstreamEnded` decides from it: answered before a response head,
    /// a truncation after).
    var event: UpstreamEvent {
        switch self {
        case .connection(let event): return event
        case .timeout: return .readTimeout
        case .queueTimeout, .queueFull: return .connectTimeout
        default: return .error(errno: ECONNRESET, tls: [], dnsError: 0)
        }
    }
}

/// One exchange on an `H2UpstreamConnection`. Toward the exchange it looks like an HTTP/1.1 upstream: the
/// exchange writes the HTTP/1.1 request into `output` as it would to a socket, and reads an HTTP/1.1 response
/// from `input` (Content-Length as the server gave it, else chunked; 1xx heads before). In between, the request is
/// read back (`HTTP1RequestReader`) into a header list (`MessageTranslation`, RFC 9113 §8) and DATA frames, and
/// the stream's events are written as HTTP/1.1 bytes. A stream's window is given back only as the exchange takes
/// bytes out of `input`, so a slow client holds back only its own stream, and the memory it holds is bounded by
/// the window.
final class H2UpstreamStream: EventHandler, UpstreamChannel {
    let key: PoolKey
    let context: ClientTLSContext
    unowned(unsafe) let worker: Worker
    /// Unowned, as `UpstreamConnection.owner` (see there).
    unowned var owner: (any UpstreamChannelOwner)? {
        didSet { if owner != nil, pendingFailure != nil { _ = mtls_evtimer_add_ms(timer, 0) } }
    }
    /// A failure found before anyone owned the stream, delivered from the loop once someone does.
    private var pendingFailure: H2StreamFailure?
    /// Why it failed, for `failure(for:timeouts:)`.
    private(set) var h2Failure: H2StreamFailure?
    /// Its connection carried streams before it (the access log's `reused`).
    var servedBefore = false
    let input: OpaquePointer
    let output: OpaquePointer
    /// The connection carrying it, from `attach` until it ends. Strong: the connection holds its streams too, and
    /// both let go when the stream ends (`H2UpstreamConnection.detach`).
    var connection: H2UpstreamConnection? {
        didSet { if let connection { lastTransport = connection.transport } }
    }
    /// The transport of the last connection, for the failure's answer and the log once the connection is gone.
    private var lastTransport: UpstreamConnection?
    private(set) var streamID: Int32 = 0
    /// The proxy's own head (up to `max_header_bytes`, 1 MiB, plus the fields it adds): limits above those.
    private var reader = HTTP1RequestReader(limits: HeadLimits(maxHeadBytes: 2 << 20, maxHeaderCount: 8192))
    private(set) var requestMethod = ""
    private var requestDone = false
    /// Request body bytes handed to the session.
    private(set) var requestBodyBytesSent = 0
    /// How the translated response's body goes into `input`: as it came (a length, or none), or as chunks.
    private var framing: MessageTranslation.ResponseFraming = .none
    private(set) var responseHeadSeen = false
    /// The server ended the stream (END_STREAM): the response is complete.
    private(set) var ended = false
    private var trailers: [H2Field] = []
    /// DATA bytes put into `input` and not yet given back to the stream's window.
    private var dataOutstanding = 0
    /// Bytes the exchange has taken out of `input` since the last window update.
    private var taken = 0
    private var paused = false
    private var readablePending = false
    private var timer: OpaquePointer?
    private var timeoutMillis = 0
    private(set) var finished = false
    /// The HTTP/1.1 bytes of a chunk line or the last chunk, reused (heads are written in the connection's buffer).
    private var scratch: [UInt8] = []

    /// Request body bytes the session may hold for a stream before the exchange is held back.
    static let bodyBound = 64 * 1024

    /// For the pool, to open a connection for it: the route's name, timeouts and SSRF guard.
    let routeLabel: String
    let timeouts: Timeouts
    let allowPrivate: Bool
    /// `h2_connections`: how many connections its key may have before it waits for a free stream.
    let maxConnections: Int
    /// The exchange's second try (its first was not processed): the pool puts it on another connection.
    let isRetry: Bool

    init(key: PoolKey, context: ClientTLSContext, worker: Worker, routeLabel: String, timeouts: Timeouts, allowPrivate: Bool,
         maxConnections: Int = 4, isRetry: Bool = false) {
        self.maxConnections = maxConnections
        self.isRetry = isRetry
        self.routeLabel = routeLabel
        self.timeouts = timeouts
        self.allowPrivate = allowPrivate
        self.key = key
        self.context = context
        self.worker = worker
        input = evbuffer_new()
        output = evbuffer_new()
        super.init()
        let me = callbackArgument
        evbuffer_add_cb(output, h2StreamOutputChanged, me)
        evbuffer_add_cb(input, h2StreamInputChanged, me)
        timer = makeTimer(base: worker.base)
    }

    deinit {
        if let timer { event_free(timer) }
        evbuffer_free(input)
        evbuffer_free(output)
    }

    var isReady: Bool { connection?.isReady ?? false }

    // MARK: what the exchange does

    func setReadTimeout(_ span: TimeSpan?) {
        timeoutMillis = span?.milliseconds ?? 0
        armTimer()
    }

    private func armTimer() {
        guard let timer, h2Failure == nil else { return }
        if timeoutMillis > 0 && !finished { _ = mtls_evtimer_add_ms(timer, timeoutMillis) } else { event_del(timer) }
    }

    func enableRead(_ on: Bool) {
        paused = !on
        if on, evbuffer_get_length(input) > 0 {
            readablePending = true
            connection?.scheduleWork()
        }
    }

    /// The exchange is over: the stream is cancelled if still open, and forgotten.
    func close() {
        guard !finished else { return }
        finished = true
        owner = nil
        if let timer { event_del(timer) }
        let carrier = connection
        connection = nil
        if let carrier { carrier.detach(self) } else { worker.h2Pool.forget(self) }
    }

    // MARK: from the connection

    /// The connection's session is up; the stream opens once its head is queued (`startIfHeadReady`).
    func connectionReady() {}

    /// Opens the stream once the request head is in `output`; the id, or nil while it is not.
    /// The head is parsed into the connection's reused head and translated into its reused header list (the
    /// request's bytes, lowercased names, no String per field), then both are emptied, their bytes zeroed.
    func startIfHeadReady(on session: H2ClientSession, scratch: inout H2TranslationScratch) -> Int32? {
        guard streamID == 0, !finished else { return nil }
        let length = evbuffer_get_length(output)
        guard length > 0, let p = evbuffer_pullup(output, length) else { return nil }
        defer { scratch.clear() }
        do {
            guard let (bodyFraming, consumed) = try reader.nextHead(UnsafeRawBufferPointer(start: p, count: length), into: &scratch.head) else {
                return nil
            }
            requestMethod = scratch.head.method
            MessageTranslation.requestHeaderList(scratch.head, into: &scratch.list)
            let size = scratch.list.listSize
            if size > Int(session.serverMaxHeaderListSize) {
                fail(.requestHeadTooLarge(size: size, limit: session.serverMaxHeaderListSize))
                return nil
            }
            let hasBody = bodyFraming != .none
            let id = try session.startRequest(scratch.list, method: requestMethod, hasBody: hasBody)
            evbuffer_drain(output, consumed)
            streamID = id
            if !hasBody { requestDone = true }
            armTimer()
            // "Connected": the request is on its way (the access log gets the stream id, the response timeout starts).
            owner?.upstreamConnected(self)
            return id
        } catch {
            fail(.protocolError("the request could not be sent as HTTP/2: \(error)"))
            return nil
        }
    }

    /// Moves request body bytes from `output` into the session, up to `bodyBound` held there.
    func pumpRequest(_ session: H2ClientSession) {
        guard streamID > 0, !requestDone, !finished else { return }
        var moved = false
        while session.pendingBody(streamID) < Self.bodyBound {
            let length = evbuffer_get_length(output)
            if length == 0 { break }
            guard let p = evbuffer_pullup(output, length) else { break }
            let bytes = UnsafeRawBufferPointer(start: p, count: length)
            let step: HTTP1RequestReader.Step
            do { step = try reader.next(bytes) } catch {
                fail(.protocolError("the request body could not be sent as HTTP/2: \(error)"))
                return
            }
            switch step {
            case .data(let n):
                session.sendBody(streamID, UnsafeRawBufferPointer(rebasing: bytes[0..<n]))
                requestBodyBytesSent += n
                evbuffer_drain(output, n)
            case .skip(let n):
                evbuffer_drain(output, n)
            case .end(let n):
                evbuffer_drain(output, n)
            case .head, .needMore:
                break
            }
            moved = true
            if reader.isDone {
                requestDone = true
                // The request's trailer section, if any, as a HEADERS frame with END_STREAM after the DATA.
                session.endBody(streamID, trailers: MessageTranslation.trailerFields(reader.trailers))
                break
            }
            if case .needMore = step { break }
            if case .head = step { break }
        }
        if moved && evbuffer_get_length(output) <= Worker.writeLowWatermark { owner?.upstreamWritable(self) }
    }

    /// Gives the stream's window back for what the exchange took, and delivers a readable that waited.
    /// Bytes taken are out of `input` whether or not the exchange paused the stream since (it often pauses in the
    /// same turn as it takes them, its client's buffer full): their credit always goes back, or the window would
    /// shrink with every pause until the stream stalls. A paused stream takes nothing more, so `input` stays
    /// bounded by the window.
    func giveBackWindow(_ session: H2ClientSession) {
        if taken > 0 && dataOutstanding > 0 {
            let n = min(taken, dataOutstanding)
            session.consumed(streamID, n)
            dataOutstanding -= n
        }
        taken = 0
        if readablePending && !paused {
            readablePending = false
            if evbuffer_get_length(input) > 0 { owner?.upstreamReadable(self) }
        }
    }

    /// Interim (1xx) heads a stream may carry: HEADERS are not flow-controlled, so more would be queued for the
    /// client without bound.
    static let maxInterimResponses = 16
    private var interimResponses = 0

    func informational(_ fields: H2HeaderList, scratch: inout H2TranslationScratch) {
        interimResponses += 1
        guard interimResponses <= Self.maxInterimResponses else {
            connection?.session?.reset(streamID, errorCode: 0xb)  // ENHANCE_YOUR_CALM
            connection?.scheduleWork()
            fail(.protocolError("the upstream sent more than \(Self.maxInterimResponses) interim (1xx) responses"))
            return
        }
        defer { scratch.clearResponseHead() }
        guard (try? MessageTranslation.writeResponseHead(fields, requestMethod: requestMethod, endStream: false, into: &scratch.responseHead)) != nil else { return }
        scratch.responseHead.withUnsafeBytes { _ = evbuffer_add(input, $0.baseAddress, $0.count) }
        armTimer()
        notifyReadable()
    }

    func response(_ fields: H2HeaderList, endStream: Bool, scratch: inout H2TranslationScratch) {
        defer { scratch.clearResponseHead() }
        do {
            framing = try MessageTranslation.writeResponseHead(fields, requestMethod: requestMethod, endStream: endStream, into: &scratch.responseHead)
            responseHeadSeen = true
            scratch.responseHead.withUnsafeBytes { _ = evbuffer_add(input, $0.baseAddress, $0.count) }
            armTimer()
            notifyReadable()
        } catch {
            connection?.session?.reset(streamID, errorCode: 0x1)
            fail(.badResponseHead("\(error)"))
        }
    }

    func data(_ bytes: UnsafeRawBufferPointer) {
        guard !finished, !bytes.isEmpty else { return }
        if framing == .chunked {
            scratch.removeAll(keepingCapacity: true)
            MessageTranslation.HTTP1Bytes.chunkStart(bytes.count, into: &scratch)
            scratch.withUnsafeBytes { _ = evbuffer_add(input, $0.baseAddress, $0.count) }
        }
        evbuffer_add(input, bytes.baseAddress, bytes.count)
        if framing == .chunked {
            MessageTranslation.HTTP1Bytes.chunkEnd.withUnsafeBytes { _ = evbuffer_add(input, $0.baseAddress, $0.count) }
        }
        dataOutstanding += bytes.count
        armTimer()
        notifyReadable()
    }

    func trailers(_ fields: [H2Field]) {
        trailers = fields
    }

    func responseEnded() {
        guard !finished, !ended else { return }
        ended = true
        if let timer { event_del(timer) }
        if framing == .chunked {
            scratch.removeAll(keepingCapacity: true)
            MessageTranslation.HTTP1Bytes.lastChunk(trailers: trailers, into: &scratch)
            scratch.withUnsafeBytes { _ = evbuffer_add(input, $0.baseAddress, $0.count) }
        }
        notifyReadable()
    }

    /// The stream is closed on the session: fine after END_STREAM, else a reset.
    func closed(errorCode: UInt32) {
        guard !ended, !finished else { return }
        fail(.reset(errorCode == 0 ? 0x8 : errorCode))
    }

    /// `protocol = "auto"` and the server selected HTTP/1.1 before anything of the exchange went out: the request
    /// bytes queued here (head, and the body so far) move to `channel`, an HTTP/1.1 connection, which the exchange
    /// takes in this stream's place. False when the stream has no exchange, ended, or already opened.
    func handOver(to channel: any UpstreamChannel) -> Bool {
        guard !finished, h2Failure == nil, streamID == 0, let owner else { return false }
        evbuffer_add_buffer(channel.requestBuffer, output)
        finished = true
        self.owner = nil
        if let timer { event_del(timer) }
        connection = nil
        owner.upstreamReplaced(self, by: channel)
        return true
    }

    /// Fails a stream that could not be placed; the failure reaches its owner from the loop once it has one.
    func refuse(_ failure: H2StreamFailure) {
        fail(failure)
        if owner == nil, let timer { _ = mtls_evtimer_add_ms(timer, 0) }
    }

    func connectionFailed(_ failure: H2StreamFailure) {
        guard !finished else { return }
        if ended {
            // The response was complete; what the connection does now is none of this exchange's business.
            return
        }
        fail(failure)
    }

    private func fail(_ failure: H2StreamFailure) {
        guard !finished, h2Failure == nil else { return }
        if let timer { event_del(timer) }
        h2Failure = failure
        if case .reset(let code) = failure, code != 0x7 {
            worker.logger.info("upstream \(key.host):\(key.port) (\(routeLabel)): HTTP/2 stream \(streamID) reset: \(H2ClientSession.errorName(code))")
        }
        guard let owner else {
            pendingFailure = failure
            return
        }
        owner.upstreamEnded(self, failure.event)
    }

    private func notifyReadable() {
        guard !finished else { return }
        if paused {
            readablePending = true
            return
        }
        owner?.upstreamReadable(self)
    }

    /// The response timeout, the wait for a free stream, or a failure that waited for an owner.
    override func timerFired() {
        guard !finished else { return }
        if pendingFailure != nil, let owner, let failure = h2Failure {
            pendingFailure = nil
            owner.upstreamEnded(self, failure.event)
            return
        }
        guard !ended, h2Failure == nil else { return }
        guard let connection else {
            worker.h2Pool.forget(self)
            fail(.queueTimeout)
            return
        }
        connection.session?.reset(streamID, errorCode: 0x8)
        connection.scheduleWork()
        fail(.timeout)
    }

    fileprivate func outputChanged(added: Int) {
        if added > 0 { connection?.scheduleWork() }
    }

    fileprivate func inputChanged(deleted: Int) {
        guard deleted > 0 else { return }
        taken += deleted
        connection?.scheduleWork()
    }
}

extension H2UpstreamStream {
    var state: UpstreamChannelState {
        if finished || h2Failure != nil { return .closed }
        return isReady ? .ready : .connecting
    }
    var requestBuffer: OpaquePointer { output }
    var responseBuffer: OpaquePointer { input }
    var unsentRequestBytes: Int { evbuffer_get_length(output) }

    func receiveResponse(_ on: Bool) { enableRead(on) }
    func setResponseTimeout(_ span: TimeSpan?) { setReadTimeout(span) }

    /// The stream ends; the connection stays for the others (and in the pool).
    func finish(reusable: Bool, idleTimeout: TimeSpan) { close() }
    func abort() { close() }

    /// HTTP/2 has no 101: upgrades go over HTTP/1.1 (`RequestDecision` keys them so).
    func switchToRelay() -> Endpoint? {
        close()
        return nil
    }

    func failure(for event: UpstreamEvent, timeouts: Timeouts) -> UpstreamChannelFailure {
        let upstream = "\(key.host):\(key.port)"
        func answer(_ status: Int, _ type: ProxyErrorType, _ details: String, _ reason: String) -> UpstreamChannelFailure {
            UpstreamChannelFailure(response: ProxyErrorResponse(status: status, errorType: type, details: details), metricReason: reason, warn: false)
        }
        switch h2Failure {
        case .reset(let code)?:
            return answer(502, .httpProtocolError,
                          "the upstream \(upstream) reset the HTTP/2 stream before answering: \(H2ClientSession.errorName(code))", "h2_stream_reset")
        case .protocolError(let why)?:
            return answer(502, .httpProtocolError, "\(why) (upstream \(upstream))", "h2_protocol_error")
        case .badResponseHead(let why)?:
            return answer(502, .httpProtocolError, "the upstream \(upstream) sent an HTTP/2 response head that cannot be forwarded: \(why)", "h2_protocol_error")
        case .alpnRefused(let selected)?:
            return answer(502, .tlsProtocolError,
                          "the upstream \(upstream) did not select h2 in ALPN (it selected \(selected.map { "\"\($0)\"" } ?? "nothing")); the route says protocol = \"\(key.httpProtocol.rawValue)\"",
                          "h2_alpn")
        case .serverSpeaksHTTP11?:
            return answer(502, .httpProtocolError, "the upstream \(upstream) selected HTTP/1.1 in ALPN; the next request goes over HTTP/1.1", "h2_alpn")
        case .queueFull?:
            return answer(503, .connectionLimitReached,
                          "every HTTP/2 stream to \(upstream) is busy and \(H2Pool.maxWaitingPerKey) requests already wait for one", "h2_queue")
        case .requestHeadTooLarge(let size, let limit)?:
            return answer(431, .httpRequestError,
                          "the request head (\(size) bytes as HTTP/2 counts them) is larger than the upstream \(upstream) takes (SETTINGS_MAX_HEADER_LIST_SIZE \(limit))",
                          "h2_request_head_too_large")
        case .queueTimeout?:
            return answer(503, .connectionLimitReached,
                          "no HTTP/2 stream to \(upstream) became free within the connect timeout (h2_connections = \(maxConnections), all their streams busy)", "h2_queue")
        case .timeout?, .connection?, nil:
            return connection?.transport.failure(for: event, timeouts: timeouts) ?? lastTransport?.failure(for: event, timeouts: timeouts)
                ?? answer(502, .destinationUnavailable, "the HTTP/2 connection to \(upstream) ended", "h2_connection")
        }
    }

    /// Not processed by the server: REFUSED_STREAM (also what nghttp2 reports for streams above a GOAWAY's last
    /// stream id), or a stream that never opened on a connection that failed.
    func requestMayBeUnprocessed(after event: UpstreamEvent) -> Bool {
        switch h2Failure {
        case .reset(0x7)?, .serverSpeaksHTTP11?: return true
        case .connection?: return streamID == 0 && servedBefore
        default: return false
        }
    }

    var upstreamProtocol: String { "h2" }
    var isReused: Bool { servedBefore }

    func describeConnection(into record: inout AccessRecord) {
        (connection?.transport ?? lastTransport)?.describeConnection(into: &record)
        record.reused = servedBefore
        if servedBefore { record.connectMs = 0 }
        record.upstreamProtocol = "h2"
        record.upstreamStreamID = streamID > 0 ? Int(streamID) : nil
    }
}

/// What a connection lends the stream whose head it translates (one at a time): the parsed request head and its
/// header list, and the HTTP/1.1 bytes of a response head, refilled for each, so that a warm connection
/// translates heads without allocating.
struct H2TranslationScratch {
    var head = RequestHead()
    var list = H2HeaderList()
    var responseHead: [UInt8] = []

    /// What the buffers may keep between heads; those of a larger head are dropped after it (as the exchange store
    /// does with an exchange's head buffers), so one large head does not stay with the connection.
    static let keptBytes = 32 * 1024

    /// Empties the request's, their bytes overwritten with zeros (the next head may be another client's).
    mutating func clear() {
        head.clearKeepingCapacity()
        if head.headers.bufferCapacity > Self.keptBytes { head = RequestHead() }
        list.removeAll(keepingAtMost: Self.keptBytes)
    }

    /// Empties the response head's bytes, zeroed, the same way.
    mutating func clearResponseHead() {
        responseHead.removeAllZeroing()
        if responseHead.capacity > Self.keptBytes { responseHead = [] }
    }
}

private func h2StreamOutputChanged(_ buffer: OpaquePointer?, _ info: UnsafePointer<evbuffer_cb_info>?, _ ctx: UnsafeMutableRawPointer?) {
    guard let ctx, let info else { return }
    let stream = Unmanaged<EventHandler>.fromOpaque(ctx).takeUnretainedValue() as! H2UpstreamStream
    stream.outputChanged(added: info.pointee.n_added)
}

private func h2StreamInputChanged(_ buffer: OpaquePointer?, _ info: UnsafePointer<evbuffer_cb_info>?, _ ctx: UnsafeMutableRawPointer?) {
    guard let ctx, let info else { return }
    let stream = Unmanaged<EventHandler>.fromOpaque(ctx).takeUnretainedValue() as! H2UpstreamStream
    stream.inputChanged(deleted: info.pointee.n_deleted)
}
