import CEventTLS
import HTTP1

/// The exchange as a machine without sockets, its request and response sides as HAProxy's `http_msg req` and
/// `rsp`: the shell offers it the client's input and the upstream's output (request), the upstream's input and
/// the client's output (response), and an upstream's end, and carries out the one action each step returns. It scans and parses the head where the last read left off, takes interim and final
/// heads, moves the body by its framing, and says when the response is complete, cut short or invalid. The
/// heads the client gets and the access record are written by `ExchangeClientSide.swift`; what needs the
/// connection (pausing a side, the upstream side's end, pooling) stays in `ClientConnection`.
extension Exchange {
    enum ResponseStep: Equatable {
        /// Nothing more until more bytes arrive.
        case wait
        /// `responseHead` is an interim response (1xx other than 101): pass it on to an HTTP/1.1 client, then step again.
        /// At most `maxInterimResponses` per request: the next one is a `fail` (502).
        case forwardInterim
        /// `responseHead` is a 101 to this upgrade request: hand both sides to a relay.
        case switchProtocols(upgrade: String)
        /// `responseHead` was taken as the final response (framing, record): write the client's head, then step again.
        case sendFinalHead
        /// The client holds too much unsent: stop reading the upstream until it drains.
        case pauseUpstream
        /// The response is complete (its framing says so).
        case complete
        /// Nothing of the response went to the client, and it cannot be: answer 502 in its place.
        case fail(ProxyErrorResponse)
        /// Part of the response went to the client, and the rest cannot be completed: reset the client.
        case truncate(String)
    }

    /// One step over the upstream's bytes in `source`; the body goes to `output`.
    mutating func stepResponse(from source: OpaquePointer, to output: OpaquePointer, limits: HeadLimits,
                               highWatermark: Int) -> ResponseStep {
        switch response {
        case .awaitingHead(var scan):
            let available = evbuffer_get_length(source)
            guard available > 0, let method = request?.method, let version = request?.version else { return .wait }
            let limit = limits.maxHeadBytes
            let window = min(available, limit + 4)
            let buffer = UnsafeRawBufferPointer(start: evbuffer_pullup(source, window), count: window)
            do {
                // The search resumes where the last read left it: a trickled head costs linear time.
                guard let length = try HeadParser.headLength(buffer, limit: limit, resuming: &scan) else {
                    if available >= limit { throw HTTPParseError.headTooLarge(limit: limit) }
                    response = .awaitingHead(scan)
                    return .wait
                }
                response = .awaitingHead(HeadParser.Scan())
                try HeadParser.parseResponse(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), into: &responseHead, limits: limits)
                evbuffer_drain(source, length)
                if responseHead.status == 101 {
                    // A 101 to a request that did not ask for an upgrade is not a response it can have.
                    guard let upgrade else { throw HTTPParseError.invalidStatusLine }
                    response = .switched
                    return .switchProtocols(upgrade: upgrade)
                }
                if responseHead.status < 200 {
                    // Each interim head is queued for the client, and the client's backpressure does not stop
                    // them (the upstream is read on): more than HTTP/2 allows (`H2UpstreamStream`) is a flood.
                    interimResponses += 1
                    guard interimResponses <= Self.maxInterimResponses else {
                        return .fail(ProxyErrorResponse(status: 502, errorType: .httpProtocolError,
                            details: "the upstream sent more than \(Self.maxInterimResponses) interim (1xx) responses"))
                    }
                    return .forwardInterim
                }
                try acceptFinalResponse(requestMethod: method, requestVersion: version, limits: limits)
                response = .body
                return .sendFinalHead
            } catch {
                let details: String
                if case .headTooLarge = error as? HTTPParseError {
                    details = "the upstream's response head exceeds \(limit) bytes"
                } else {
                    details = "the upstream sent an invalid response: \((error as? HTTPParseError)?.description ?? "\(error)")"
                }
                return .fail(ProxyErrorResponse(status: 502, errorType: .httpProtocolError, details: details))
            }
        case .body:
            if responseFraming == .none {
                response = .done
                return .complete
            }
            switch moveResponseBody(from: source, to: output, highWatermark: highWatermark) {
            case .waiting: return .wait
            case .destinationFull: return .pauseUpstream
            case .complete:
                response = .done
                return .complete
            case .invalid(let error):
                return .truncate("invalid chunked response body from the upstream" + (error.map { ": \($0.description)" } ?? ""))
            }
        case .switched, .done:
            return .wait
        }
    }

    /// What the shell does after client bytes were offered to the request side (HAProxy's `http_msg req`).
    enum RequestStep: Equatable {
        /// Everything available of the body went upstream; more may come (or a pipelined head waits).
        case wait
        /// The upstream holds too much unsent: stop reading the client until it drains.
        case pauseClient
        /// The whole body went upstream.
        case complete
        /// The body's framing is invalid: answer 400 if nothing of the response went out, else cut.
        case fail(ProxyErrorResponse)
    }

    /// One step of the request body from the client's `input` to the upstream's `destination`.
    mutating func stepRequest(from input: OpaquePointer, to destination: OpaquePointer, highWatermark: Int) -> RequestStep {
        do {
            switch try moveRequestBody(from: input, to: destination, highWatermark: highWatermark) {
            case .waiting: return .wait
            case .destinationFull: return .pauseClient
            case .complete: return .complete
            }
        } catch {
            return .fail(.badRequest((error as? HTTPParseError) ?? .invalidChunkSize))
        }
    }

    /// What the end of the upstream connection (EOF, error, timeout) means for the response.
    enum ResponseEnd: Equatable {
        /// No response head yet: the upstream failed (answer in its place, or retry on a fresh connection).
        case failedBeforeResponse
        /// A close-delimited body ran to a clean end (close_notify): the response is complete.
        case complete
        /// The body was cut short: the client connection is reset, never ended as if the body were complete.
        case truncate(String)
        /// The exchange is past the response: the connection just goes.
        case closeUpstream
    }

    mutating func upstreamEnded(_ event: UpstreamEvent, output: OpaquePointer) -> ResponseEnd {
        switch response {
        case .awaitingHead:
            return .failedBeforeResponse
        case .body:
            if case .eof(let closeNotify) = event, closeNotify, responseFraming == .untilClose {
                if clientFraming == .chunked {
                    ChunkedEncoder.lastChunk.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
                }
                response = .done
                return .complete
            }
            // A bare FIN without close_notify, a reset, a timeout, a short length.
            switch event {
            case .readTimeout:
                return .truncate("response truncated: the upstream stopped sending the body (read timeout)")
            case .eof:
                return .truncate(responseFraming == .untilClose
                    ? "response truncated: the upstream closed the connection without close_notify"
                    : "response truncated: the upstream closed the connection before the body was complete")
            default:
                return .truncate("response truncated: the upstream connection failed before the body was complete")
            }
        case .switched, .done:
            return .closeUpstream
        }
    }

    /// Whether the request may be sent again on a fresh channel after the one it went on ended before any
    /// response, the channel saying the server cannot have processed it (`requestUnprocessed`, from
    /// `UpstreamChannel.requestMayBeUnprocessed`: for HTTP/1.1, a pooled connection the server closed just as it
    /// was reused): once, for an idempotent request without a body.
    func mayRetry(requestUnprocessed: Bool) -> Bool {
        guard !retried, requestUnprocessed, let request else { return false }
        return ["GET", "HEAD", "OPTIONS", "TRACE"].contains(request.method)
            && (try? BodyFraming.forRequest(request)) == BodyFraming.none
    }
}
