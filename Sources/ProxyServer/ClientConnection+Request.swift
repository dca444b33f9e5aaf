import CEventTLS
import HTTP1
import ProxyConfig
import TLS

/// The client connection's request side: the head loop (pipelined heads one exchange after the other), the
/// proxy credentials, the decision (`RequestDecision`), taking the upstream side, and the request body.
extension ClientConnection {
    // MARK: request head

    /// Parses every complete head in the input, one exchange after the other (pipelining), as a loop.
    func readHeads() {
        guard !parsingHeads else { return }
        parsingHeads = true
        defer { parsingHeads = false }
        while machine.isAwaitingHead {
            let available = evbuffer_get_length(input)
            guard available > 0 else {
                releaseExchange()  // idle: nothing of a request is here
                return
            }
            // Storage taken from the worker for this head is renewed already (when given back).
            var freshStorage = false
            let limit = runtime.limits.maxHeadBytes
            let window = min(available, limit + 4)
            guard let bytes = evbuffer_pullup(input, window) else { return }
            let buffer = UnsafeRawBufferPointer(start: bytes, count: window)
            var head = RequestHead()
            let headLength: Int
            do {
                var scan = machine.headScan
                guard let length = try HeadParser.headLength(buffer, limit: limit, resuming: &scan) else {
                    if available >= limit { throw HTTPParseError.headTooLarge(limit: limit) }
                    perform(machine.headIncomplete(scan))
                    return
                }
                freshStorage = holdExchange()
                head = exchange.takeRequestHead()
                try HeadParser.parseRequest(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), into: &head, limits: runtime.limits)
                headLength = length
            } catch {
                holdExchange()
                exchange = Exchange()
                openRecord(method: "-")
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

    func answerRequestTimeout(_ why: Machine.RequestTimeout) {
        let details: String
        switch why {
        case .head:
            details = "the request head did not arrive within client_timeout \(runtime.config.proxy.clientTimeout)"
        case .headTrickled:
            details = "the request head did not arrive within header_timeout \(runtime.config.proxy.headerTimeout)"
        case .body:
            details = "the request body stalled: nothing arrived for client_timeout \(runtime.config.proxy.clientTimeout)"
        }
        holdExchange()  // a head that never completed has none yet
        if !exchange.isRecording { openRecord(method: "-") }
        // Part of the request may have gone upstream: `finish` closes that connection, which can carry nothing else.
        finish(.answered(ProxyErrorResponse(status: 408, errorType: .httpRequestError, details: details), close: true))
    }

    func openRecord(method: String) {
        exchange.openRecord(method: method, client: peer, kind: kind)
    }

    func startExchange(_ head: RequestHead, freshStorage: Bool) {
        if !freshStorage { exchange.renew() }
        exchange.request = head
        openRecord(method: head.method)
        let framing = Result { try BodyFraming.forRequest(head) }
        // A chunked body's trailer section is held to the head's limits (read from the runtime only then) and loses
        // the fields its Connection field names.
        if case .success(.chunked) = framing {
            exchange.requestBody = Exchange.RequestBody(.chunked, limits: runtime.limits,
                                                        connectionOptions: TrailerFields.connectionOptions(head.headers))
        } else {
            exchange.requestBody = Exchange.RequestBody(framing)
        }
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
    func authenticationFinished(_ head: RequestHead, _ framing: Result<BodyFraming, any Error>, _ outcome: AuthOutcome) {
        guard machine.isExchanging, upstream == nil, exchange.request != nil else { return }
        guard outcome == .allowed else { refuseAuthentication(head, framing, outcome); return }
        decideExchange(head, framing)
        // Body bytes that arrived during the check.
        if upstream != nil, evbuffer_get_length(input) > 0 { pumpRequestBody() }
    }

    func refuseAuthentication(_ head: RequestHead, _ framing: Result<BodyFraming, any Error>, _ outcome: AuthOutcome) {
        let hasBody = (try? framing.get()).map { $0 != .none } ?? true
        let (response, headers) = outcome.refusal(credentialsSent: head.headers.contains("Proxy-Authorization"))
        finish(.answered(response, close: hasBody || head.method == "CONNECT" || outcome != .denied, extraHeaders: headers))
    }

    func decideExchange(_ head: RequestHead, _ framing: Result<BodyFraming, any Error>) {
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
    func attachUpstream(key: PoolKey, context: ClientTLSContext, timeouts: Timeouts) -> Bool {
        guard let upstream = worker.upstreamChannel(key: key, context: context, connectTimeout: timeouts.connect,
                                                    allowPrivate: exchange.match?.allowPrivate ?? false, route: exchange.match) else {
            finish(.answered(ProxyErrorResponse(status: 502, errorType: .proxyInternalError,
                                                details: "could not start a connection to \(key.host):\(key.port)"), close: true))
            return false
        }
        self.upstream = upstream
        upstream.owner = self
        upstream.describeConnection(into: &exchange.record)
        exchange.upstreamRequestHead.withUnsafeBytes { _ = evbuffer_add(upstream.requestBuffer, $0.baseAddress, $0.count) }
        if upstream.state == .ready {
            upstream.setResponseTimeout(timeouts.response)
            upstream.receiveResponse(true)
        }
        return true
    }

    // MARK: request body

    func pumpRequestBody() {
        guard machine.isExchanging, let upstream, upstream.state != .closed else { return }
        switch exchange.stepRequest(from: input, to: upstream.requestBuffer, highWatermark: Worker.writeHighWatermark) {
        case .wait, .complete:
            // Pipelined requests wait in the input buffer until this exchange ends (bounded by the read
            // watermark). Reading stays enabled: toggling it per request costs two epoll_ctl calls. Once the
            // request is complete, a client_timeout ends nothing (the machine reads that from the exchange).
            break
        case .pauseClient:
            machine.paused(.client)
            client.disableRead()
        case .fail(let response):
            // Part of the body may already be upstream: this exchange cannot be saved.
            finish(.failed(response))
        }
    }
}
