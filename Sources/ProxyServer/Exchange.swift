import HTTP1
import ProxyConfig

/// One request and its response on a client connection (HAProxy's `http_txn`): made when a head is parsed,
/// replaced by the next one, so nothing of one exchange is reset by hand or leaks into the next.
struct Exchange {
    /// The request's message state after its head (HAProxy's `http_msg req`): the body still due, or done.
    enum RequestBody {
        case contentLength(remaining: UInt64)
        case chunked(ChunkedDecoder)
        /// The head's framing is invalid: the body can never be read (the request is answered 400 and the
        /// connection closed).
        case unframed
        case done

        /// `limits`: those of a head, which a trailer section is held to as well; `connectionOptions`: what the head's
        /// `Connection` names, dropped from the trailer section too.
        init(_ framing: BodyFraming, limits: HeadLimits = HeadLimits(), connectionOptions: [[UInt8]] = []) {
            switch framing {
            case .contentLength(let n): self = .contentLength(remaining: n)
            case .chunked:
                var decoder = ChunkedDecoder(trailerLimits: limits)
                decoder.connectionOptions = connectionOptions
                self = .chunked(decoder)
            case .none, .untilClose: self = .done
            }
        }

        init(_ framing: Result<BodyFraming, any Error>, limits: HeadLimits = HeadLimits()) {
            if case .success(let framing) = framing { self.init(framing, limits: limits) } else { self = .unframed }
        }

        var isDone: Bool {
            if case .done = self { return true }
            return false
        }
    }

    enum ResponseState {
        /// No final response head yet (interim ones may have gone to the client).
        case awaitingHead(HeadParser.Scan)
        /// The final head was taken (and goes to the client); the body follows by `responseFraming`.
        case body
        /// 101 Switching Protocols: the connection went on to a relay.
        case switched
        case done
    }

    var request: RequestHead?
    var target: AbsoluteTarget?
    var match: RouteMatch?
    /// The pool key of the upstream connection the request goes to.
    var key: PoolKey?
    /// The request head as it goes upstream, kept for one retry on a fresh connection.
    var upstreamRequestHead: [UInt8] = []
    var requestBody: RequestBody = .done
    var response: ResponseState = .awaitingHead(HeadParser.Scan())
    var responseFraming: BodyFraming = .none
    /// Interim (1xx) heads passed on for this request; more than `maxInterimResponses` fails it with a 502.
    var interimResponses = 0
    static let maxInterimResponses = H2UpstreamStream.maxInterimResponses
    var clientFraming: Forwarding.ClientFraming = .none
    var responseRemaining: UInt64 = 0
    var responseDecoder = ChunkedDecoder.forResponse()
    /// Whether the upstream's head allows its connection to be reused once the body is through.
    var upstreamAllowsReuse = true
    /// The response announced a body it must not have (HEAD, 204, 304): stray bytes may follow it.
    var responseAnnouncedBody = false
    /// The Upgrade value asked for (e.g. websocket), when the request is an upgrade.
    var upgrade: String?
    var retried = false
    var startMicros = 0
    var record = AccessRecord()

    /// How far the request and response have got, for the connection's machine.
    var progress: ExchangeProgress {
        let responseStarted: Bool
        if case .awaitingHead = response { responseStarted = false } else { responseStarted = true }
        return ExchangeProgress(requestComplete: requestBody.isDone, responseStarted: responseStarted)
    }

    /// Whether an access record is open (written once, by `ClientConnection.finishRecord`).
    var isRecording: Bool { startMicros != 0 }

    // Buffers one exchange hands on to the next on the same connection. Only their capacity carries over:
    // each exchange overwrites them before it reads them, so a warm keep-alive connection parses and writes
    // heads without allocating.
    /// The upstream's response head, parsed into (`HeadParser.parseResponse(_:into:limits:)`).
    var responseHead = ResponseHead()
    /// The response head as it goes to the client.
    var clientResponseHead: [UInt8] = []
    /// The host of the last request forwarded on this connection: the next one usually names it again, and then
    /// shares this String instead of making one.
    var recentHost: String?
    /// A request head kept for its buffers while the exchange waits in the `ExchangeStore`.
    var spareRequestHead: RequestHead?

    /// The next exchange on this connection: everything new, except the capacity of the head buffers. (The
    /// request head's buffers go round through `takeRequestHead`, taken before the next head is parsed.)
    mutating func renew() {
        // The buffers are moved out (not copied), the old exchange is replaced in place, the buffers moved back.
        var upstreamHead: [UInt8] = [], response = ResponseHead(), clientHead: [UInt8] = []
        swap(&upstreamHead, &upstreamRequestHead)
        swap(&response, &responseHead)
        swap(&clientHead, &clientResponseHead)
        var spare: RequestHead? = nil
        swap(&spare, &spareRequestHead)
        let host = target?.host ?? recentHost
        self = Exchange()
        swap(&upstreamHead, &upstreamRequestHead)
        swap(&response, &responseHead)
        swap(&clientHead, &clientResponseHead)
        swap(&spare, &spareRequestHead)
        recentHost = host
    }

    /// Between requests, in the worker's `ExchangeStore`: everything of the finished exchange is released but
    /// the buffers, the request head's among them, for the next request to reuse.
    mutating func store() {
        // The bytes of the finished request and response (credentials, cookies) are overwritten now, not when the
        // buffers are next used, possibly by another client's connection.
        var head = takeRequestHead()
        head.clearKeepingCapacity()
        upstreamRequestHead.removeAllZeroing()
        clientResponseHead.removeAllZeroing()
        responseHead.clearKeepingCapacity()
        renew()
        spareRequestHead = head
    }

    /// The capacity of the head buffers it keeps between exchanges: the request and response heads as parsed, as
    /// they went upstream and to the client.
    var headBufferBytes: Int {
        upstreamRequestHead.capacity + clientResponseHead.capacity + responseHead.headers.bufferCapacity
            + (request?.headers.bufferCapacity ?? 0) + (spareRequestHead?.headers.bufferCapacity ?? 0)
    }

    /// The request head of the exchange that ended, to parse the next one into (its buffers reused), or an
    /// empty one. The exchange no longer holds it.
    mutating func takeRequestHead() -> RequestHead {
        if let head = request {
            request = nil
            return head
        }
        if let head = spareRequestHead {
            spareRequestHead = nil
            return head
        }
        return RequestHead()
    }
}

extension Exchange {

    /// Takes `responseHead`, the upstream's final response (status 200 and up, not 101) to `request`: its framing,
    /// the client's framing, and the record. Everything that can reject the head is checked before anything of it
    /// is recorded or reaches the client, so a rejected head is still answered with a 502. (Both heads are read
    /// in place: copying them would cost a retain and release of each of their buffers.)
    mutating func acceptFinalResponse(requestMethod method: String, requestVersion: HTTPVersion, limits: HeadLimits = HeadLimits()) throws {
        let framing = try BodyFraming.forResponse(responseHead, requestMethod: method)
        if framing == .untilClose, responseHead.headers.contains("Transfer-Encoding") {
            // A coding other than chunked (gzip, ...): stripping it would pass the coded bytes off as the content.
            throw HTTPParseError.unsupportedTransferEncoding(responseHead.headers.values("Transfer-Encoding").joined(separator: ", "))
        }
        responseFraming = framing
        if case .contentLength(let n) = framing { responseRemaining = n }
        let status = responseHead.status
        record.upstreamStatus = status
        record.status = status
        record.ttfbMs = (monotonicMicros() - startMicros) / 1000
        clientFraming = Forwarding.clientFraming(upstream: framing, clientVersion: requestVersion)
        responseDecoder = ChunkedDecoder.forResponse(trailerLimits: limits)
        if framing == .chunked { responseDecoder.connectionOptions = TrailerFields.connectionOptions(responseHead.headers) }
        upstreamAllowsReuse = responseHead.allowsReuse
        // Only a response without a body by rule can announce one it must not have (see `UpstreamReuse`).
        if framing == .none, method == "HEAD" || status == 204 || status == 304 {
            if let cl = responseHead.headers.first("Content-Length") {
                responseAnnouncedBody = cl.utf8.contains { $0 >= 0x31 && $0 <= 0x39 }  // a length other than 0
            } else {
                responseAnnouncedBody = responseHead.headers.contains("Transfer-Encoding")
            }
        }
    }
}

/// When an upstream connection may go back to the pool after an exchange: only when nothing more can arrive
/// on it for the exchange that ended, so that any later byte is noticed by the pool and the connection discarded.
enum UpstreamReuse {
    static func mayPool(requestMethod: String, status: Int, announcesBody: Bool, closeDelimited: Bool,
                        requestComplete: Bool, upstreamAllows: Bool) -> Bool {
        guard upstreamAllows, requestComplete, !closeDelimited else { return false }
        // A response that has no body by rule but announces one (a HEAD answer with the GET's Content-Length, a
        // 204 or 304 with a length): a server that sends that body anyway would have its bytes read as the next
        // exchange's response, perhaps another client's. Such a connection is closed instead.
        let bodiless = requestMethod == "HEAD" || status == 204 || status == 304
        return !(bodiless && announcesBody)
    }
}
