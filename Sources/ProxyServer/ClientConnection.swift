import CEventTLS
import HTTP1
import ProxyConfig
import TLS
#if canImport(Glibc)
import Glibc
#endif

/// One connection from a workflow. Reads a request head, decides (route), relays the request to an upstream
/// connection and the response back, then waits for the next request (keep-alive) or closes.
///
/// The request side and the response side each have their own state, because a body may still be streaming up
/// while the response starts coming down.
final class ClientConnection: UpstreamConnectionDelegate {
    enum Phase {
        /// Between requests: waiting for (the rest of) a request head.
        case readingHead
        /// A request is being served.
        case exchanging
        /// Our last bytes are queued; close once they are written.
        case closingAfterWrite
        /// Written and half-closed; reading what the client still sends so the close does not reset our answer.
        case lingering
        /// Waiting for a tunnel's TCP connection.
        case dialling
        /// Bytes flow both ways through `relay` (a tunnel, or after 101 Switching Protocols).
        case relaying
        case closed
    }

    enum RequestBody {
        case contentLength(remaining: UInt64)
        case chunked(ChunkedDecoder)
        case done
    }

    enum ResponseState {
        case awaitingHead
        case body
        case done
    }

    unowned let worker: Worker
    /// The client's bufferevent; after interception, the TLS filter over it.
    private(set) var bev: OpaquePointer
    let peer: String
    private(set) var kind: ListenerKind
    /// A tunnel or an upgraded connection: both bufferevents belong to it.
    private var relay: Relay?
    private var dialer: TunnelDialer?
    /// The Upgrade value asked for (e.g. websocket), when the request is an upgrade.
    private var upgrade: String?
    private(set) var phase: Phase = .readingHead
    private var lingerTimer: OpaquePointer?
    /// Runs from the first byte of a request head that did not arrive in one read, to its end.
    private var headTimer: OpaquePointer?
    private var headTimerArmed = false
    /// How far the search for the end of the request head has got (the head is drained only when complete).
    private var headScan = HeadParser.Scan()

    // The exchange in progress.
    private var request: RequestHead?
    private var target: AbsoluteTarget?
    private var match: RouteMatch?
    private var upstreamRequestHead: [UInt8] = []
    private var requestBody: RequestBody = .done
    private var upstream: UpstreamConnection?
    private var responseState: ResponseState = .done
    private var responseFraming: BodyFraming = .none
    private var clientFraming: Forwarding.ClientFraming = .none
    private var responseRemaining: UInt64 = 0
    private var responseDecoder = ChunkedDecoder()
    private var keepAlive = true
    private var retried = false
    private var upstreamReadPaused = false
    private var clientReadPaused = false
    private var startMicros = 0
    private var record = AccessRecord()

    init(worker: Worker, bev: OpaquePointer, peer: String, kind: ListenerKind) {
        self.worker = worker
        self.bev = bev
        self.peer = peer
        self.kind = kind
    }

    private var input: OpaquePointer { bufferevent_get_input(bev) }
    private var output: OpaquePointer { bufferevent_get_output(bev) }
    private var runtime: ProxyRuntime { worker.runtime }

    func start() {
        let me = Unmanaged.passUnretained(self).toOpaque()
        bufferevent_setcb(bev, clientReadCallback, clientWriteCallback, clientEventCallback, me)
        bufferevent_setwatermark(bev, Int16(EV_READ), 0, Worker.readHighWatermark)
        bufferevent_setwatermark(bev, Int16(EV_WRITE), Worker.writeLowWatermark, 0)
        mtls_bufferevent_set_timeouts_ms(bev, runtime.config.proxy.clientTimeout.milliseconds, 0)
        bufferevent_enable(bev, Int16(EV_READ | EV_WRITE))
    }

    // MARK: client events

    fileprivate func readable() {
        switch phase {
        case .readingHead: readHead()
        case .exchanging: pumpRequestBody()
        case .lingering: evbuffer_drain(input, evbuffer_get_length(input))
        case .closingAfterWrite, .closed, .dialling, .relaying: break
        }
    }

    fileprivate func writable() {
        switch phase {
        case .closingAfterWrite:
            if evbuffer_get_length(output) == 0 { startLingering() }
        case .exchanging:
            if upstreamReadPaused && evbuffer_get_length(output) <= Worker.writeLowWatermark {
                upstreamReadPaused = false
                upstream?.enableRead(true)
                pumpResponse()
            }
        default: break
        }
    }

    fileprivate func event(_ what: Int16) {
        let flags = Int32(what)
        // The TLS filter of an intercepted tunnel reports its completed handshake; nothing to do.
        if flags & BEV_EVENT_CONNECTED != 0 { return }
        if case .intercepted(let host, _) = kind, flags & BEV_EVENT_ERROR != 0, phase == .readingHead {
            var errors: [OpenSSLErrorEntry] = []
            while true {
                let code = bufferevent_get_openssl_error(bev)
                if code == 0 { break }
                errors.append(OpenSSLErrorEntry(code: code))
            }
            if !errors.filter({ !$0.isPseudo }).isEmpty {
                worker.logger.info("intercepted tunnel to \(host) from \(peer): TLS with the client failed: \(OpenSSLErrors.describe(errors)) (does the workflow trust the local CA? see `mtls-proxy ca --pem`)")
            }
        }
        switch phase {
        case .readingHead:
            if flags & BEV_EVENT_TIMEOUT != 0 && evbuffer_get_length(input) > 0 {
                sendError(ProxyErrorResponse(status: 408, errorType: .httpRequestError,
                                             details: "the request head did not arrive within client_timeout \(runtime.config.proxy.clientTimeout)"),
                          close: true)
            } else {
                abort()
            }
        case .exchanging:
            // The client went away (or stalled past the timeout) mid-exchange: nothing can be delivered.
            if record.status == 0 { record.status = 499 }
            finishRecord(proxyStatus: "client closed the connection before the response completed")
            abort()
        case .dialling:
            if record.status == 0 { record.status = 499 }
            finishRecord(proxyStatus: "client closed the connection before the tunnel was open")
            abort()
        case .closingAfterWrite, .lingering, .closed, .relaying:
            abort()
        }
    }

    /// Graceful shutdown: close now if idle, else after the current response.
    func drain() {
        switch phase {
        case .readingHead where evbuffer_get_length(input) == 0: abort()
        case .exchanging: keepAlive = false
        default: break
        }
    }

    /// Closes at once, dropping whatever is unsent; the upstream, if any, is closed, not pooled.
    func abort() {
        guard phase != .closed else { return }
        let wasRelaying = phase == .relaying
        phase = .closed
        dialer?.cancel()
        dialer = nil
        if let upstream {
            self.upstream = nil
            upstream.close()
        }
        if wasRelaying, let relay {
            // The relay owns the client's bufferevent now; closing it frees both sides.
            self.relay = nil
            relay.close()
            if let lingerTimer { event_free(lingerTimer); self.lingerTimer = nil }
            if let headTimer { event_free(headTimer); self.headTimer = nil }
            worker.clientClosed(self)
            return
        }
        if let lingerTimer {
            event_free(lingerTimer)
            self.lingerTimer = nil
        }
        if let headTimer {
            event_free(headTimer)
            self.headTimer = nil
        }
        bufferevent_setcb(bev, nil, nil, nil, nil)
        bufferevent_free(bev)
        worker.clientClosed(self)
    }

    // MARK: request head

    private func readHead() {
        let available = evbuffer_get_length(input)
        guard available > 0 else { return }
        let limit = runtime.limits.maxHeadBytes
        let window = min(available, limit + 4)
        guard let bytes = evbuffer_pullup(input, window) else { return }
        let buffer = UnsafeRawBufferPointer(start: bytes, count: window)
        let head: RequestHead
        let headLength: Int
        do {
            guard let length = try HeadParser.headLength(buffer, limit: limit, resuming: &headScan) else {
                if available >= limit { throw HTTPParseError.headTooLarge(limit: limit) }
                armHeadTimer()
                return
            }
            headScan = HeadParser.Scan()
            disarmHeadTimer()
            head = try HeadParser.parseRequest(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), limits: runtime.limits)
            headLength = length
        } catch let error as HTTPParseError {
            startRecord(method: "-", target: nil)
            sendError(.badRequest(error), close: true)
            return
        } catch {
            abort()
            return
        }
        evbuffer_drain(input, headLength)
        startExchange(head)
    }

    /// A slow client (slowloris) gets `header_timeout` for the whole head, however it trickles in.
    private func armHeadTimer() {
        guard !headTimerArmed else { return }
        if headTimer == nil {
            headTimer = mtls_evtimer_new(worker.base, clientHeadTimeoutCallback, Unmanaged.passUnretained(self).toOpaque())
        }
        headTimerArmed = true
        _ = mtls_evtimer_add_ms(headTimer, runtime.config.proxy.headerTimeout.milliseconds)
    }

    private func disarmHeadTimer() {
        guard headTimerArmed, let headTimer else { return }
        headTimerArmed = false
        event_del(headTimer)
    }

    fileprivate func headTimedOut() {
        headTimerArmed = false
        guard phase == .readingHead else { return }
        startRecord(method: "-", target: nil)
        sendError(ProxyErrorResponse(status: 408, errorType: .httpRequestError,
                                     details: "the request head did not arrive within header_timeout \(runtime.config.proxy.headerTimeout)"),
                  close: true)
    }

    private func startRecord(method: String, target: AbsoluteTarget?) {
        startMicros = monotonicMicros()
        record = AccessRecord()
        record.startEpochMillis = currentEpochMillis()
        record.client = peer
        switch kind {
        case .forward: break
        case .fixed(let listener): record.listener = listener.configKey
        case .intercepted: record.intercepted = true
        }
        record.method = method
        if let target {
            record.scheme = target.scheme
            record.host = target.host
            record.path = String(target.path)
        }
    }

    private func startExchange(_ head: RequestHead) {
        startRecord(method: head.method, target: nil)
        request = head
        keepAlive = head.wantsKeepAlive && !worker.draining
        retried = false

        // issue 15 point 4 (faults branch): a bcrypt check runs off the loop; the exchange resumes in
        // authenticationFinished. Meanwhile phase is .exchanging with no upstream, so arriving bytes stay put.
        if case .forward = kind, let authenticator = worker.authenticator, !authenticated {
            let outcome = authenticator.check(head.headers.first("Proxy-Authorization"), peer: peer, worker: worker) { [weak self] in
                self?.authenticationFinished(head, $0)
            }
            guard let outcome else { phase = .exchanging; return }
            guard outcome == .allowed else { refuseAuthentication(head, outcome); return }
        }
        authenticated = false

        if head.method == "CONNECT" {
            switch kind {
            case .forward:
                startTunnel(head)
            case .fixed(let listener):
                sendError(ProxyErrorResponse(status: 405, errorType: .httpRequestError,
                                             details: "CONNECT is not accepted on \(listener.configKey), which sends every request to \(listener.upstreamURL)"),
                          close: true)
            case .intercepted:
                sendError(ProxyErrorResponse(status: 405, errorType: .httpRequestError,
                                             details: "CONNECT inside a tunnel is not accepted"), close: true)
            }
            return
        }
        let framing: BodyFraming
        var target: AbsoluteTarget
        do {
            framing = try BodyFraming.forRequest(head)
            let hosts = head.headers.count(of: "Host")
            if hosts > 1 { throw HTTPParseError.multipleHosts }
            if head.version == .http11 && hosts == 0 { throw HTTPParseError.missingHost }
            switch kind {
            case .forward:
                target = try AbsoluteTarget.parse(head.target)
            case .fixed(let listener):
                // A base-URL client sends origin form; the upstream is the listener's, whatever Host says.
                try AbsoluteTarget.checkOriginForm(head.target)
                target = AbsoluteTarget(scheme: "https", host: listener.host, explicitPort: listener.port, pathAndQuery: head.target)
            case .intercepted(let host, let port):
                // Inside a tunnel the host is the one CONNECT named; Host is rewritten to it.
                try AbsoluteTarget.checkOriginForm(head.target)
                target = AbsoluteTarget(scheme: "https", host: host, explicitPort: port, pathAndQuery: head.target)
            }
        } catch let error as HTTPParseError {
            sendError(.badRequest(error), close: true)
            return
        } catch {
            abort()
            return
        }
        if let refusal = Refusals.nonCanonicalHost(target.host) {
            sendError(refusal, close: true)
            return
        }
        // Issue 12: a forward request for one of the proxy's own listeners (missing from NO_PROXY) is refused by name.
        if case .forward = kind, let own = runtime.config.ownListener(host: target.host, port: target.explicitPort ?? 80) {
            return sendError(Refusals.ownListener(own, host: target.host, port: target.explicitPort ?? 80), close: framing != .none)
        }
        self.target = target
        record.scheme = target.scheme
        record.host = target.host
        record.path = String(target.path)
        switch framing {
        case .contentLength(let n): requestBody = .contentLength(remaining: n)
        case .chunked: requestBody = .chunked(ChunkedDecoder())
        case .none, .untilClose: requestBody = .done
        }
        let hasBody = framing != .none

        // An http:// URL without a port means the service's https port.
        let port = target.explicitPort ?? 443
        record.port = port
        // Route decision (issue 11): the path is normalised to its one canonical form, routed on that form, and
        // that form is what goes upstream; spellings some server would read differently get 400.
        let match: RouteMatch
        switch RequestRouting.decide(runtime.router, host: target.host, port: port, path: target.path) {
        case .routed(let canonicalPath, let decided):
            match = decided
            target = target.withPath(canonicalPath)
            self.target = target
            record.path = canonicalPath
        case .refused(let refusal, let decided):
            record.route = decided?.label ?? ""
            sendError(RequestRouting.badRequest(refusal, match: decided), close: true)
            return
        }
        self.match = match
        record.route = match.label

        let context: ClientTLSContext
        switch match.action {
        case .deny:
            sendError(Refusals.denied(match, host: target.host, port: port), close: hasBody)
            return
        case .mtls(let identity):
            record.identity = identity
            fallthrough
        case .tls:
            switch runtime.context(for: match) {
            case .context(let ctx): context = ctx
            case .noValidCertificate(let identity, let expiry):
                let when = expiry.map { " (the last one expired at \(formatUTC($0)))" } ?? ""
                sendError(ProxyErrorResponse(status: 502, errorType: .proxyConfigurationError,
                                             details: "identity \(identity) has no currently valid certificate\(when)",
                                             advice: "Stage a valid certificate for identity \(identity) in the proxy's config; run `mtls-proxy check` to see its certificates."),
                          close: hasBody)
                return
            }
        }
        record.certificateSerial = context.credential?.leafSerialHex

        let hostHeader = target.hostHeader(port: port, defaultPort: 443)
        upgrade = nil
        if let value = head.headers.first("Upgrade").flatMap(Forwarding.forwardableUpgrade), !hasBody, head.version == .http11,
           head.headers.listElements("Connection").contains(where: { $0.equalsIgnoringASCIICase("upgrade") }) {
            upgrade = value
        }
        upstreamRequestHead = Forwarding.upstreamRequest(head, pathAndQuery: target.pathAndQuery, host: hostHeader,
                                                         framing: framing, upgrade: upgrade)
        let key = PoolKey(host: target.host, port: port, connect: match.connect, context: ObjectIdentifier(context))
        phase = .exchanging
        responseState = .awaitingHead
        guard attachUpstream(key: key, context: context, timeouts: match.timeouts) else { return }
        pumpRequestBody()
    }

    // issue 15 point 4 (faults branch): the answer of an off-loop credential check, on this loop.
    private var authenticated = false

    private func authenticationFinished(_ head: RequestHead, _ outcome: AuthOutcome) {
        guard phase == .exchanging, upstream == nil else { return }
        phase = .readingHead
        guard outcome == .allowed else { refuseAuthentication(head, outcome); return }
        authenticated = true
        startExchange(head)
    }

    private func refuseAuthentication(_ head: RequestHead, _ outcome: AuthOutcome) {
        let hasBody = (try? BodyFraming.forRequest(head)).map { $0 != .none } ?? true
        let (response, headers) = outcome.refusal(credentialsSent: head.headers.contains("Proxy-Authorization"))
        sendError(response, close: hasBody || head.method == "CONNECT" || outcome != .denied, extraHeaders: headers)
    }

    /// Takes a pooled connection for `key` or opens one, and queues the request head on it.
    private func attachUpstream(key: PoolKey, context: ClientTLSContext, timeouts: Timeouts) -> Bool {
        let upstream: UpstreamConnection
        if let pooled = worker.pool.take(key) {
            upstream = pooled
            worker.metrics.shared.upstreamReused.increment()
            record.reused = true
            record.connectMs = 0
            record.tlsVersion = pooled.tlsVersion
            record.cipher = pooled.cipher
        } else if let fresh = worker.openUpstream(key: key, context: context, connectTimeout: timeouts.connect,
                                                  allowPrivate: match?.allowPrivate ?? false) {
            upstream = fresh
            record.reused = false
        } else {
            sendError(ProxyErrorResponse(status: 502, errorType: .proxyInternalError,
                                         details: "could not start a connection to \(key.host):\(key.port)"), close: true)
            return false
        }
        self.upstream = upstream
        upstream.delegate = self
        upstreamReadPaused = false
        upstreamRequestHead.withUnsafeBytes { _ = evbuffer_add(upstream.output, $0.baseAddress, $0.count) }
        if upstream.state == .ready {
            upstream.setReadTimeout(timeouts.response)
            upstream.enableRead(true)
        }
        return true
    }

    // MARK: request body

    private func pumpRequestBody() {
        guard phase == .exchanging, let upstream, upstream.state != .closed else { return }
        let destination = upstream.output
        do {
            loop: while true {
                if case .done = requestBody { break }
                let available = evbuffer_get_length(input)
                if available == 0 { break }
                if evbuffer_get_length(destination) >= Worker.writeHighWatermark {
                    clientReadPaused = true
                    bufferevent_disable(bev, Int16(EV_READ))
                    break
                }
                switch requestBody {
                case .contentLength(let remaining):
                    let n = Int(min(remaining, UInt64(available)))
                    evbuffer_remove_buffer(input, destination, n)
                    record.bytesIn += n
                    requestBody = remaining == UInt64(n) ? .done : .contentLength(remaining: remaining - UInt64(n))
                case .chunked(var decoder):
                    if let remaining = decoder.dataRemaining {
                        let n = Int(min(remaining, UInt64(available)))
                        ChunkedEncoder.chunkHeader(size: n).withUnsafeBytes { _ = evbuffer_add(destination, $0.baseAddress, $0.count) }
                        evbuffer_remove_buffer(input, destination, n)
                        ChunkedEncoder.chunkTrailer.withUnsafeBytes { _ = evbuffer_add(destination, $0.baseAddress, $0.count) }
                        decoder.consumedData(n)
                        record.bytesIn += n
                        requestBody = .chunked(decoder)
                        continue
                    }
                    let window = min(available, ChunkedDecoder.maxLineLength + 2)
                    let bytes = evbuffer_pullup(input, window)
                    let step = try decoder.next(UnsafeRawBufferPointer(start: bytes, count: window))
                    switch step {
                    case .skip(let n):
                        evbuffer_drain(input, n)
                        record.bytesIn += n
                        requestBody = .chunked(decoder)
                    case .end(let n):
                        evbuffer_drain(input, n)
                        record.bytesIn += n
                        ChunkedEncoder.lastChunk.withUnsafeBytes { _ = evbuffer_add(destination, $0.baseAddress, $0.count) }
                        requestBody = .done
                    case .data:
                        requestBody = .chunked(decoder)  // handled above on the next turn
                    case .needMore:
                        requestBody = .chunked(decoder)
                        break loop
                    }
                case .done:
                    break loop
                }
            }
        } catch let error as HTTPParseError {
            // Part of the body may already be upstream: this exchange cannot be saved.
            failExchange(.badRequest(error))
            return
        } catch {
            abort()
            return
        }
        // Pipelined requests wait in the input buffer until this exchange ends (bounded by the read watermark).
        // Reading stays enabled: toggling it per request costs two epoll_ctl calls.
    }

    // MARK: upstream events

    func upstreamConnected(_ upstream: UpstreamConnection) {
        if upstream.sessionReused {
            worker.metrics.shared.handshakesResumed.increment()
        } else {
            worker.metrics.shared.handshakesFull.increment()
        }
        record.connectMs = (upstream.connectedMicros - upstream.connectStartedMicros) / 1000
        if upstream.handshakeStartedMicros > 0 {
            record.tcpConnectMs = (upstream.handshakeStartedMicros - upstream.connectStartedMicros) / 1000
            record.tlsHandshakeMs = (upstream.connectedMicros - upstream.handshakeStartedMicros) / 1000
        }
        record.tlsVersion = upstream.tlsVersion
        record.cipher = upstream.cipher
        upstream.setReadTimeout(match?.timeouts.response)
    }

    func upstreamWritable(_ upstream: UpstreamConnection) {
        if clientReadPaused && evbuffer_get_length(upstream.output) <= Worker.writeLowWatermark {
            clientReadPaused = false
            bufferevent_enable(bev, Int16(EV_READ))
            pumpRequestBody()
        }
    }

    func upstreamReadable(_ upstream: UpstreamConnection) {
        pumpResponse()
    }

    func upstreamEvent(_ upstream: UpstreamConnection, _ event: UpstreamConnection.Event) {
        switch responseState {
        case .awaitingHead:
            if case .connectTimeout = event {} else if retryOnFreshConnection(after: event) { return }
            let response = errorResponse(for: event, upstream: upstream)
            worker.metrics.countFailure(Self.failureReason(response.errorType))
            self.upstream = nil
            upstream.close()
            failExchange(response)
        case .body:
            if case .eof = event, responseFraming == .untilClose {
                if clientFraming == .chunked {
                    ChunkedEncoder.lastChunk.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
                }
                responseState = .done
                self.upstream = nil
                upstream.close()
                finishExchange(reusable: false)
                return
            }
            // Cut short: the head is already with the client, so all that is left is to close.
            let why: String
            switch event {
            case .readTimeout: why = "the upstream stopped sending the response body (read timeout)"
            default: why = "the upstream closed the connection before the response body was complete"
            }
            finishRecord(proxyStatus: ProxyErrorResponse(status: 502, errorType: .httpResponseIncomplete, details: why).proxyStatusValue)
            self.upstream = nil
            upstream.close()
            if clientFraming == .close {
                keepAlive = false
                closeAfterWrite()
            } else {
                abort()
            }
        case .done:
            self.upstream = nil
            upstream.close()
        }
    }

    /// A pooled connection may have been closed by the server just as we reused it. An idempotent request with
    /// no body is then tried once more on a new connection; anything else is reported.
    private func retryOnFreshConnection(after event: UpstreamConnection.Event) -> Bool {
        guard !retried, let upstream, upstream.requestsServed > 0, let request, let match else { return false }
        guard ["GET", "HEAD", "OPTIONS", "TRACE"].contains(request.method), BodyFramingIsEmpty(request) else { return false }
        switch event {
        case .eof, .error: break
        default: return false
        }
        retried = true
        let key = upstream.key
        let context = upstream.context
        self.upstream = nil
        upstream.close()
        guard let fresh = worker.openUpstream(key: key, context: context, connectTimeout: match.timeouts.connect,
                                              allowPrivate: match.allowPrivate) else { return false }
        record.reused = false
        self.upstream = fresh
        fresh.delegate = self
        upstreamRequestHead.withUnsafeBytes { _ = evbuffer_add(fresh.output, $0.baseAddress, $0.count) }
        return true
    }

    /// The `reason` label of failed upstream connections.
    static func failureReason(_ type: ProxyErrorType) -> String {
        switch type {
        case .dnsError: return "dns"
        case .connectionRefused, .destinationUnavailable: return "connect"
        case .connectionTimeout: return "connect_timeout"
        case .destinationIPProhibited: return "prohibited"
        case .connectionReadTimeout: return "response_timeout"
        case .tlsCertificateError: return "tls_verify"
        case .tlsAlertReceived: return "tls_alert"
        case .httpProtocolError, .httpResponseIncomplete, .httpResponseHeaderSectionSize: return "http"
        default: return "closed"
        }
    }

    private func errorResponse(for event: UpstreamConnection.Event, upstream: UpstreamConnection) -> ProxyErrorResponse {
        let host = upstream.key.host, port = upstream.key.port
        let dialled = upstream.key.connect.map { " (dialling \($0))" } ?? ""
        let timeouts = match?.timeouts ?? runtime.config.upstream.timeouts
        switch event {
        case .prohibited(let address, let reason):
            return Refusals.prohibited(host: host, address: address, reason: reason)
        case .connectTimeout:
            return ProxyErrorResponse(status: 504, errorType: .connectionTimeout,
                                      details: "no TLS connection to \(host):\(port)\(dialled) within connect_timeout \(timeouts.connect)",
                                      advice: "The upstream did not answer in time. Check the address, the network path, and raise connect_timeout if it is just slow.")
        case .readTimeout:
            return ProxyErrorResponse(status: 504, errorType: .connectionReadTimeout,
                                      details: "the upstream \(host):\(port) sent no response within response_timeout \(timeouts.response)",
                                      advice: "Raise the route's response_timeout if the service is slow to answer.")
        case .error(let errno, let tls, let dnsError) where dnsError != 0:
            _ = (errno, tls)
            return ProxyErrorResponse(status: 502, errorType: .dnsError,
                                      details: "cannot resolve \(host): \(String(cString: evutil_gai_strerror(dnsError)))",
                                      advice: "Check the host name, or pin an address with connect = \"IP:PORT\" on the route.")
        case .error(let errno, let tls, _) where !upstream.handshakeCompleted && tls.allSatisfy(\.isPseudo)
            && UpstreamConnection.connectErrnos.contains(errno) && upstream.serverBytesRead == 0:
            if errno == ECONNREFUSED {
                return ProxyErrorResponse(status: 502, errorType: .connectionRefused,
                                          details: "\(host):\(port)\(dialled) refused the connection",
                                          advice: "Nothing is listening there: check the URL's port or the route's connect address.")
            }
            return ProxyErrorResponse(status: 502, errorType: .destinationUnavailable,
                                      details: "cannot reach \(host):\(port)\(dialled): \(String(cString: strerror(errno)))")
        case .error(let errno, let tls, _):
            return tlsFailure(upstream, errors: tls, errno: errno, closed: false).response
        case .eof:
            return tlsFailure(upstream, errors: OpenSSLErrors.drain(), errno: 0, closed: true).response
        }
    }

    private func tlsFailure(_ upstream: UpstreamConnection, errors: [OpenSSLErrorEntry], errno: Int32, closed: Bool) -> UpstreamTLSFailure {
        let verify = upstream.verifyResult
        return UpstreamTLSFailure(
            phase: upstream.handshakeCompleted ? .afterHandshake : .handshake,
            host: upstream.key.host, port: upstream.key.port,
            identity: upstream.context.identityName, certificateSubject: upstream.context.credential?.leaf.subject,
            verifyResult: upstream.handshakeCompleted ? 0 : verify.code, verifyMessage: verify.message,
            errors: errors, socketErrno: errno, closed: closed)
    }

    // MARK: response

    private func pumpResponse() {
        guard phase == .exchanging, let upstream, upstream.state == .ready else { return }
        let source = upstream.input
        do {
            loop: while true {
                switch responseState {
                case .awaitingHead:
                    let available = evbuffer_get_length(source)
                    guard available > 0 else { break loop }
                    let limit = runtime.limits.maxHeadBytes
                    let window = min(available, limit + 4)
                    let buffer = UnsafeRawBufferPointer(start: evbuffer_pullup(source, window), count: window)
                    guard let length = try HeadParser.headLength(buffer, limit: limit) else {
                        if available >= limit { throw HTTPParseError.headTooLarge(limit: limit) }
                        break loop
                    }
                    let head = try HeadParser.parseResponse(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), limits: runtime.limits)
                    evbuffer_drain(source, length)
                    try startResponse(head)
                case .body:
                    if !relayResponseBody(from: source) { break loop }
                case .done:
                    break loop
                }
            }
        } catch let error as HTTPParseError {
            let details: String
            if case .headTooLarge = error {
                details = "the upstream's response head exceeds \(runtime.limits.maxHeadBytes) bytes"
            } else {
                details = "the upstream sent an invalid response: \(error.description)"
            }
            if record.upstreamStatus == nil {
                self.upstream = nil
                upstream.close()
                failExchange(ProxyErrorResponse(status: 502, errorType: .httpProtocolError, details: details))
            } else {
                finishRecord(proxyStatus: ProxyErrorResponse(status: 502, errorType: .httpProtocolError, details: details).proxyStatusValue)
                abort()
            }
        } catch {
            abort()
        }
    }

    private func startResponse(_ head: ResponseHead) throws {
        guard let request else { return }
        if head.status == 101 {
            guard let upgrade else { throw HTTPParseError.invalidStatusLine }  // 101 to a request that did not ask
            switchProtocols(head, upgrade: upgrade)
            return
        }
        if head.status < 200 {
            // 100 Continue and other interim responses go to the client as they are.
            let interim = Forwarding.clientResponse(head, framing: .none, requestMethod: request.method, keepAlive: true,
                                                    clientVersion: request.version)
            if request.version == .http11 {
                interim.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
            }
            return
        }
        record.upstreamStatus = head.status
        record.status = head.status
        record.ttfbMs = (monotonicMicros() - startMicros) / 1000
        responseFraming = try BodyFraming.forResponse(head, requestMethod: request.method)
        clientFraming = Forwarding.clientFraming(upstream: responseFraming, clientVersion: request.version)
        if clientFraming == .close { keepAlive = false }
        if case .done = requestBody {} else { keepAlive = false }  // the rest of the request body has nowhere to go
        let bytes = Forwarding.clientResponse(head, framing: clientFraming, requestMethod: request.method,
                                              keepAlive: keepAlive, clientVersion: request.version,
                                              locationRewrite: kind.locationRewrite(for: request, runtime: runtime))  // issue 12: redirects stay on the proxy
        bytes.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
        record.bytesOut += bytes.count
        responseDecoder = ChunkedDecoder()
        switch responseFraming {
        case .none:
            responseState = .done
            finishExchange(reusable: head.allowsReuse)
        case .contentLength(let n):
            responseRemaining = n
            responseState = .body
        case .chunked, .untilClose:
            responseState = .body
        }
        if responseState == .done { return }
        if let upstream, responseFraming == .untilClose { upstream.setReadTimeout(match?.timeouts.response) }
        reusableAfterBody = head.allowsReuse
    }

    private var reusableAfterBody = true

    /// Moves what is available of the response body; false when it must wait (no data, or the client is slow).
    private func relayResponseBody(from source: OpaquePointer) -> Bool {
        let available = evbuffer_get_length(source)
        guard available > 0 else { return false }
        if evbuffer_get_length(output) >= Worker.writeHighWatermark {
            upstreamReadPaused = true
            upstream?.enableRead(false)
            return false
        }
        switch responseFraming {
        case .contentLength:
            let n = Int(min(responseRemaining, UInt64(available)))
            evbuffer_remove_buffer(source, output, n)
            record.bytesOut += n
            responseRemaining -= UInt64(n)
            if responseRemaining == 0 {
                responseState = .done
                finishExchange(reusable: reusableAfterBody)
            }
        case .chunked:
            if let remaining = responseDecoder.dataRemaining {
                let n = Int(min(remaining, UInt64(available)))
                if clientFraming == .chunked {
                    ChunkedEncoder.chunkHeader(size: n).withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
                }
                evbuffer_remove_buffer(source, output, n)
                if clientFraming == .chunked {
                    ChunkedEncoder.chunkTrailer.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
                }
                responseDecoder.consumedData(n)
                record.bytesOut += n
                return true
            }
            let window = min(available, ChunkedDecoder.maxLineLength + 2)
            let step: ChunkedDecoder.Step
            do {
                step = try responseDecoder.next(UnsafeRawBufferPointer(start: evbuffer_pullup(source, window), count: window))
            } catch {
                finishRecord(proxyStatus: ProxyErrorResponse(status: 502, errorType: .httpProtocolError,
                                                             details: "invalid chunked response body from the upstream").proxyStatusValue)
                abort()
                return false
            }
            switch step {
            case .skip(let n):
                evbuffer_drain(source, n)
            case .end(let n):
                evbuffer_drain(source, n)
                if clientFraming == .chunked {
                    ChunkedEncoder.lastChunk.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
                }
                responseState = .done
                finishExchange(reusable: reusableAfterBody)
            case .data: break
            case .needMore: return false
            }
        case .untilClose:
            if clientFraming == .chunked {
                ChunkedEncoder.chunkHeader(size: available).withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
            }
            evbuffer_remove_buffer(source, output, available)
            if clientFraming == .chunked {
                ChunkedEncoder.chunkTrailer.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
            }
            record.bytesOut += available
        case .none:
            responseState = .done
        }
        return true
    }

    // MARK: upgrades

    /// After `101 Switching Protocols`: the head goes to the client, then bytes flow both ways between the
    /// client and this upstream connection until either closes. The connection never returns to the pool.
    private func switchProtocols(_ head: ResponseHead, upgrade: String) {
        guard let request, let upstream else { return }
        record.upstreamStatus = 101
        record.status = 101
        record.ttfbMs = (monotonicMicros() - startMicros) / 1000
        var bytes = Forwarding.clientResponse(head, framing: .close, requestMethod: request.method, keepAlive: true,
                                              clientVersion: .http11, upgrade: head.headers.first("Upgrade") ?? upgrade)
        bytes.withUnsafeMutableBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
        record.bytesOut += bytes.count
        self.upstream = nil
        let timeout = match?.timeouts.idle ?? runtime.config.upstream.timeouts.idle
        guard let upstreamBev = upstream.detach() else {
            abort()
            return
        }
        startRelay(with: upstreamBev, idleTimeout: timeout)
    }

    /// Hands the client's bufferevent and `other` to a relay; the access record is written when it ends.
    private func startRelay(with other: OpaquePointer, idleTimeout: TimeSpan) {
        phase = .relaying
        let startedBytesIn = record.bytesIn, startedBytesOut = record.bytesOut
        let relay = Relay(bev, other, idleTimeout: idleTimeout) { [unowned self] fromClient, toClient in
            self.record.bytesIn = startedBytesIn + fromClient
            self.record.bytesOut = startedBytesOut + toClient
            self.finishRecord(proxyStatus: nil)
            self.relay = nil
            if self.phase == .relaying {
                self.phase = .closed
                self.worker.clientClosed(self)
            }
        }
        self.relay = relay
        relay.start()
    }

    // MARK: CONNECT

    /// CONNECT host:port, decided by the route table's host-level routes (`Router.planTunnel`). A `tls` route gets
    /// a blind tunnel; an `mtls` route, or a host with path-scoped routes that decide differently, is intercepted
    /// when `[intercept]` is set (each request inside is then routed by its path), else refused.
    private func startTunnel(_ head: RequestHead) {
        record.method = "CONNECT"
        record.scheme = "connect"
        let host: String
        let port: Int
        do {
            let authority = try AbsoluteTarget.parseAuthority(Array(head.target.utf8))
            guard let p = authority.port else { throw HTTPParseError.invalidTarget("CONNECT needs host:port") }
            host = authority.host
            port = p
        } catch let error as HTTPParseError {
            sendError(.badRequest(error), close: true)
            return
        } catch {
            abort()
            return
        }
        record.host = host
        record.port = port
        record.path = ""
        if let refusal = Refusals.nonCanonicalHost(host) {
            sendError(refusal, close: true)
            return
        }
        // Tunnel decision (issue 11): host-level routes decide; path-scoped routes that decide differently make
        // the tunnel intercepted (each request inside routed by its path), or refused when interception is off.
        let plan = runtime.router.planTunnel(host: host, port: port)
        let match = plan.decision
        self.match = match
        record.route = match.label
        if port != 443 && match.route?.port != port && plan.kind != .deny {
            sendError(ProxyErrorResponse(status: 403, errorType: .httpRequestDenied,
                                         details: "tunnels to port \(port) are refused unless a route names the port",
                                         advice: "Add port = \(port) to the route for \(host) if this tunnel should be allowed."),
                      close: true)
            return
        }
        if case .mtls(let identity) = match.action { record.identity = identity }
        switch plan.kind {
        case .deny:
            sendError(Refusals.denied(match, host: host, port: port), close: true)
        case .blindTunnel:
            dialTunnel(host: host, port: port, match: match)
        case .intercept:
            intercept(host: host, port: port, withoutInterception: TunnelRouting.interceptionRequired(plan, host: host))
        }
    }

    private func dialTunnel(host: String, port: Int, match: RouteMatch) {
        phase = .dialling
        bufferevent_disable(bev, Int16(EV_READ))
        dialer = TunnelDialer(worker: worker, host: host, port: port, connect: match.connect, allowPrivate: match.allowPrivate,
                              timeout: match.timeouts.connect) {
            [unowned self] outcome in
            self.dialer = nil
            guard self.phase == .dialling else {
                if case .connected(let b) = outcome { bufferevent_free(b) }
                return
            }
            switch outcome {
            case .connected(let upstreamBev):
                self.record.status = 200
                let established = Array("HTTP/1.1 200 Connection established\r\n\r\n".utf8)
                established.withUnsafeBytes { _ = evbuffer_add(self.output, $0.baseAddress, $0.count) }
                self.startRelay(with: upstreamBev, idleTimeout: match.timeouts.idle)
            case .prohibited(let address, let reason):
                self.phase = .exchanging
                self.sendError(Refusals.prohibited(host: host, address: address, reason: reason), close: true)
            case .timedOut:
                self.phase = .exchanging
                self.sendError(ProxyErrorResponse(status: 504, errorType: .connectionTimeout,
                                                  details: "no TCP connection to \(host):\(port) within connect_timeout \(match.timeouts.connect)"),
                               close: true)
            case .failed(let e, let dnsError):
                self.phase = .exchanging
                if dnsError != 0 {
                    self.sendError(ProxyErrorResponse(status: 502, errorType: .dnsError,
                                                      details: "cannot resolve \(host): \(String(cString: evutil_gai_strerror(dnsError)))"),
                                   close: true)
                } else {
                    let type: ProxyErrorType = e == ECONNREFUSED ? .connectionRefused : .destinationUnavailable
                    self.sendError(ProxyErrorResponse(status: 502, errorType: type,
                                                      details: "cannot connect to \(host):\(port): \(String(cString: strerror(e)))"),
                                   close: true)
                }
            }
        }
        if dialer == nil && phase == .dialling {
            phase = .exchanging
            sendError(ProxyErrorResponse(status: 502, errorType: .proxyInternalError, details: "could not start a connection to \(host):\(port)"),
                      close: true)
        }
    }

    /// Answers 200, then terminates the client's TLS with a leaf for `host` minted from the local CA, and serves
    /// the requests inside like any other: upstream verification, the route's identity, pooling.
    private func intercept(host: String, port: Int, withoutInterception refusal: ProxyErrorResponse) {
        let context: InterceptionContext?
        do {
            context = try worker.interceptionContext(for: host)
        } catch {
            sendError(ProxyErrorResponse(status: 502, errorType: .proxyInternalError, details: "cannot mint a certificate for \(host): \(error)"),
                      close: true)
            return
        }
        guard let context else {
            // Interception is off (issue 11: the answer names why the tunnel needed it).
            sendError(refusal, close: true)
            return
        }
        guard evbuffer_get_length(input) == 0, let ssl = context.makeSSL() else {
            sendError(ProxyErrorResponse(status: 400, errorType: .httpRequestError, details: "bytes after CONNECT before the tunnel was established"),
                      close: true)
            return
        }
        let established = Array("HTTP/1.1 200 Connection established\r\n\r\n".utf8)
        established.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
        let options = Int32(BEV_OPT_CLOSE_ON_FREE.rawValue | BEV_OPT_DEFER_CALLBACKS.rawValue)
        guard let filter = bufferevent_openssl_filter_new(worker.base, bev, ssl, BUFFEREVENT_SSL_ACCEPTING, options) else {
            SSL_free(ssl)
            abort()
            return
        }
        // The CONNECT itself is not logged; each request inside is, with intercepted: true.
        startMicros = 0
        bev = filter
        kind = .intercepted(host: host, port: port)
        request = nil
        phase = .readingHead
        start()
    }

    // MARK: ending an exchange

    /// The response is complete. The upstream goes back to the pool if both sides ended cleanly.
    private func finishExchange(reusable: Bool) {
        finishRecord(proxyStatus: nil)
        if let upstream {
            self.upstream = nil
            upstream.delegate = nil
            var requestComplete = false
            if case .done = requestBody { requestComplete = true }
            if reusable && requestComplete && responseFraming != .untilClose && upstream.state == .ready
                && upstream.generation == runtime.generation {
                upstream.requestsServed += 1
                worker.pool.put(upstream, maxIdle: runtime.config.upstream.maxIdlePerHost,
                                idleTimeout: match?.timeouts.idle ?? runtime.config.upstream.timeouts.idle)
            } else {
                upstream.close()
            }
        }
        endExchange()
    }

    /// Sends a response the proxy made itself, in place of the upstream's.
    private func failExchange(_ response: ProxyErrorResponse) {
        if let upstream {
            self.upstream = nil
            upstream.close()
        }
        var requestComplete = false
        if case .done = requestBody { requestComplete = true }
        sendError(response, close: !requestComplete || !keepAlive)
    }

    private func sendError(_ response: ProxyErrorResponse, close: Bool, extraHeaders: [(String, String)] = []) {
        let shouldClose = close || !keepAlive
        let bytes = response.serialize(version: .http11, closeConnection: shouldClose, extraHeaders: extraHeaders)
        bytes.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
        record.status = response.status
        record.bytesOut += bytes.count
        finishRecord(proxyStatus: response.proxyStatusValue)
        if shouldClose {
            keepAlive = false
        }
        endExchange()
    }

    private func finishRecord(proxyStatus: String?) {
        guard startMicros != 0 else { return }
        let micros = monotonicMicros() - startMicros
        record.durationMs = micros / 1000
        if let proxyStatus { record.proxyStatus = proxyStatus }
        worker.accessLog.write(record)
        let metrics = worker.metrics
        let route = record.route.isEmpty ? "-" : record.route
        metrics.countRequest(route: route, identity: record.identity, status: record.status)
        metrics.observeDuration(route: route, nanoseconds: Int64(micros) * 1000)
        metrics.shared.bytesIn.increment(by: Int64(record.bytesIn))
        metrics.shared.bytesOut.increment(by: Int64(record.bytesOut))
        startMicros = 0
    }

    private func endExchange() {
        request = nil
        target = nil
        match = nil
        requestBody = .done
        responseState = .done
        upstreamReadPaused = false
        clientReadPaused = false
        guard phase != .closed else { return }
        if keepAlive && !worker.draining {
            phase = .readingHead
            bufferevent_enable(bev, Int16(EV_READ))
            if evbuffer_get_length(input) > 0 { readHead() }
        } else {
            closeAfterWrite()
        }
    }

    private func closeAfterWrite() {
        guard phase != .closed else { return }
        phase = .closingAfterWrite
        bufferevent_disable(bev, Int16(EV_READ))
        bufferevent_setwatermark(bev, Int16(EV_WRITE), 0, 0)
        if evbuffer_get_length(output) == 0 { startLingering() }
    }

    /// Half-closes and reads for a moment what the client may still be sending (for example the rest of a
    /// refused upload), so that closing does not reset the connection before the client has read our answer.
    private func startLingering() {
        phase = .lingering
        let fd = bufferevent_getfd(bev)
        if fd >= 0 { shutdown(fd, Int32(SHUT_WR)) }
        evbuffer_drain(input, evbuffer_get_length(input))
        mtls_bufferevent_set_timeouts_ms(bev, 2000, 0)
        bufferevent_enable(bev, Int16(EV_READ))
        let me = Unmanaged.passUnretained(self).toOpaque()
        lingerTimer = mtls_evtimer_new(worker.base, clientLingerCallback, me)
        _ = mtls_evtimer_add_ms(lingerTimer, 2000)
    }
}

/// Answers the proxy gives for policy decisions, shared by forwarded requests and CONNECT tunnels.
enum Refusals {
    static func denied(_ match: RouteMatch, host: String, port: Int) -> ProxyErrorResponse {
        let details = match.route.map { "denied by \($0.label)" } ?? "no route matches \(host):\(port) and [proxy] unmatched is \"deny\""
        return ProxyErrorResponse(status: 403, errorType: .httpRequestDenied, details: details,
                                  advice: "Add a [[route]] for this host to the proxy's config if it should be reachable.")
    }

    static func prohibited(host: String, address: String, reason: String) -> ProxyErrorResponse {
        ProxyErrorResponse(status: 403, errorType: .destinationIPProhibited,
                           details: "\(host) resolved to \(address), a \(reason) address; the proxy does not connect to non-public addresses",
                           advice: "If this upstream really is on a private network, set allow_private = true on its route (or pin its address with connect = \"IP:PORT\").")
    }

    static func nonCanonicalHost(_ host: String) -> ProxyErrorResponse? {
        guard AddressPolicy.isNonCanonicalNumericHost(host) else { return nil }
        return ProxyErrorResponse(status: 400, errorType: .httpRequestError,
                                  details: "\(host) is a non-canonical numeric address; write IPv4 addresses as a.b.c.d")
    }
}

private func BodyFramingIsEmpty(_ request: RequestHead) -> Bool {
    (try? BodyFraming.forRequest(request)) == BodyFraming.none
}

private func clientReadCallback(_ bev: OpaquePointer?, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ClientConnection>.fromOpaque(ctx!).takeUnretainedValue().readable()
}

private func clientWriteCallback(_ bev: OpaquePointer?, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ClientConnection>.fromOpaque(ctx!).takeUnretainedValue().writable()
}

private func clientEventCallback(_ bev: OpaquePointer?, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ClientConnection>.fromOpaque(ctx!).takeUnretainedValue().event(what)
}

private func clientHeadTimeoutCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ClientConnection>.fromOpaque(ctx!).takeUnretainedValue().headTimedOut()
}

private func clientLingerCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<ClientConnection>.fromOpaque(ctx!).takeUnretainedValue().abort()
}
