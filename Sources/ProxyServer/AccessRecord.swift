/// One record per request. It never holds the query string or header values, which carry secrets.
struct AccessRecord {
    var startEpochMillis: Int = 0
    var client: String = ""
    var listener: String = "proxy"
    /// A request that came inside an intercepted CONNECT tunnel.
    var intercepted = false
    /// "plain" for a request that came as plain HTTP inside a CONNECT tunnel (to port 80); nil otherwise.
    var tunnel: String?
    var method: String = ""
    var scheme: String = "http"
    var host: String = ""
    var port: Int = 0
    var path: String = ""
    var route: String = ""
    var identity: String?
    var certificateSerial: String?
    var status: Int = 0
    var upstreamStatus: Int?
    var bytesIn: Int = 0
    var bytesOut: Int = 0
    var durationMs: Int = 0
    /// DNS, TCP connect and TLS handshake of a new upstream connection; 0 when a pooled one was reused.
    var connectMs: Int?
    /// The parts of it: DNS and TCP connect, then the TLS handshake.
    var tcpConnectMs: Int?
    var tlsHandshakeMs: Int?
    var ttfbMs: Int?
    var reused: Bool = false
    var tlsVersion: String?
    var cipher: String?
    /// "http/1.1" or "h2": what was spoken to the upstream; nil when nothing went upstream.
    var upstreamProtocol: String?
    /// The HTTP/2 stream id of the exchange on its connection; nil for HTTP/1.1.
    var upstreamStreamID: Int?
    var proxyStatus: String?

    /// The record as one JSON object (no newline): what `[log] format = "json"` writes.
    func json() -> String {
        let line = LogLineBuffer(capacity: 512)
        line.appendJSON(self)
        return line.string
    }

    /// The record as one text line (no newline): what `[log] format = "text"` writes.
    func text() -> String {
        let line = LogLineBuffer(capacity: 512)
        line.appendText(self)
        return line.string
    }
}
