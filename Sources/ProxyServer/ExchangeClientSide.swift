import CEventTLS
import HTTP1
import ProxyConfig

/// What the exchange writes towards the client and into its access record: the response heads as the client gets
/// them, and the record opened when a head arrives and closed once, however the exchange ends. No sockets: the
/// client's output is an evbuffer.
extension Exchange {
    /// An interim response (`responseHead`, 100 Continue and the like) goes to an HTTP/1.1 client as it is; an
    /// HTTP/1.0 client cannot take one.
    func writeInterimHead(to output: OpaquePointer) {
        guard let request, request.version == .http11 else { return }
        let interim = Forwarding.clientResponse(responseHead, framing: .none, requestMethod: request.method,
                                                keepAlive: true, clientVersion: request.version)
        interim.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
    }

    /// The final response head (`responseHead`, accepted by `acceptFinalResponse`) as it goes to the client, with
    /// `keepAlive` and the listener's Location rewrite.
    mutating func writeFinalHead(to output: OpaquePointer, keepAlive: Bool, kind: ListenerKind, runtime: ProxyRuntime) {
        // The request's method and version, not the request (a copy would retain its buffers).
        guard let method = request?.method, let version = request?.version else { return }
        // Redirects stay on the proxy. The rewrite is made only for a head that has a field it rewrites: making it
        // costs more than the rest of the response head.
        let rewritesLocation = responseHead.headers.contains("Location") || responseHead.headers.contains("Content-Location")
        let locationRewrite = rewritesLocation ? request.flatMap { kind.locationRewrite(for: $0, runtime: runtime) } : nil
        Forwarding.clientResponse(responseHead, framing: clientFraming, requestMethod: method, keepAlive: keepAlive,
                                  clientVersion: version, locationRewrite: locationRewrite, into: &clientResponseHead)
        clientResponseHead.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
    }

    /// `101 Switching Protocols` (`responseHead`) to the client, recorded; the bytes after it belong to a relay.
    mutating func writeSwitchHead(to output: OpaquePointer, upgrade: String) {
        guard let method = request?.method else { return }
        record.upstreamStatus = 101
        record.status = 101
        record.ttfbMs = (monotonicMicros() - startMicros) / 1000
        let bytes = Forwarding.clientResponse(responseHead, framing: .close, requestMethod: method, keepAlive: true,
                                              clientVersion: .http11, upgrade: responseHead.headers.first("Upgrade") ?? upgrade)
        bytes.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
    }

    /// Opens the access record: from here the exchange is timed, and `Worker.closeRecord` writes it once.
    mutating func openRecord(method: String, client: String, kind: ListenerKind) {
        startMicros = monotonicMicros()
        record = AccessRecord()
        record.startEpochMillis = currentEpochMillis()
        record.client = client
        switch kind {
        case .forward: break
        case .fixed(let listener): record.listener = listener.configKey
        case .intercepted: record.intercepted = true
        case .plainTunnel: record.tunnel = "plain"
        }
        record.method = method
    }
}

extension Worker {
    /// Writes the exchange's access record and counts it in the metrics and on the status page, once: the record
    /// is closed after (`Exchange.isRecording`).
    func closeRecord(of exchange: inout Exchange, proxyStatus: String?) {
        guard exchange.isRecording else { return }
        let micros = monotonicMicros() - exchange.startMicros
        exchange.record.durationMs = micros / 1000
        if let proxyStatus { exchange.record.proxyStatus = proxyStatus }
        accessLog.write(exchange.record)
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
