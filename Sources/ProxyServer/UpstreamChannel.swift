import HTTP1
import ProxyConfig
import TLS

/// The exchange's upstream side: where one request goes and its response comes from. `ClientConnection` talks to
/// the upstream only through this interface. HTTP/1.1 is its first implementation (`UpstreamConnection`: one TLS
/// connection carries one exchange at a time, then goes back to the pool); an HTTP/2 stream on a shared connection
/// is meant to be the second. See "The upstream side" in docs/ARCHITECTURE.md.
///
/// The bytes both ways are HTTP/1.1 messages: the request head as `Forwarding.upstreamRequest` wrote it (one field
/// per line, hop-by-hop fields removed, `Host` first), then the body in canonical HTTP/1.1 framing (as the
/// client's Content-Length, or canonical chunks ending in `0\r\n\r\n`); the response as an HTTP/1.1 status line,
/// fields and body, which `Exchange.stepResponse` parses. An implementation that speaks another protocol
/// translates at this boundary.
protocol UpstreamChannel: AnyObject {
    /// Hears this channel's events: the exchange that uses it, or the pool while it is idle. Unowned: whoever sets
    /// it clears it (or ends the channel) before it goes.
    var owner: (any UpstreamChannelOwner)? { get set }

    var state: UpstreamChannelState { get }

    /// Request bytes (head, then body) are queued here by the exchange; the channel sends them when it can,
    /// the head already while it connects.
    var requestBuffer: OpaquePointer { get }
    /// Request bytes queued and not yet taken by the channel: the exchange stops reading the client above the
    /// write high watermark and resumes on `upstreamWritable` once this is at or below the low watermark.
    var unsentRequestBytes: Int { get }
    /// Response bytes received and not yet used by the exchange (`Exchange.stepResponse` drains what it uses).
    var responseBuffer: OpaquePointer { get }

    /// Stops (false) or resumes (true) delivering response bytes: backpressure from a slow client.
    func receiveResponse(_ on: Bool)
    /// How long the response may keep the exchange waiting between two reads; nil for no limit.
    func setResponseTimeout(_ span: TimeSpan?)

    /// The exchange is over. `reusable`: nothing more can arrive for this exchange (`UpstreamReuse.mayPool`), so
    /// the channel may serve another one (HTTP/1.1: the connection goes back to the pool with `idleTimeout`);
    /// otherwise it is closed. Either way its owner no longer hears it.
    func finish(reusable: Bool, idleTimeout: TimeSpan)
    /// Ends the channel now, for an exchange that failed or was cut.
    func abort()
    /// 101 Switching Protocols: the channel's bytes both ways, for a relay, with whatever was received and not
    /// yet used. Nil when it cannot hand over; the channel is ended either way.
    func switchToRelay() -> Endpoint?

    /// What the client gets (and the metrics count) for `event`, a failure before any response head.
    func failure(for event: UpstreamEvent, timeouts: Timeouts) -> UpstreamChannelFailure
    /// Whether the server cannot have processed the request when `event` ended the channel before any response,
    /// so that sending it again elsewhere is safe as far as the channel knows (HTTP/1.1: a pooled connection the
    /// server closed just as it was reused). The exchange adds its own conditions (`Exchange.mayRetry`).
    func requestMayBeUnprocessed(after event: UpstreamEvent) -> Bool

    /// For the access log: the protocol spoken ("http/1.1"), whether the channel served an exchange before this
    /// one (a pooled connection), and the connection's timings, TLS version and cipher.
    var upstreamProtocol: String { get }
    var isReused: Bool { get }
    func describeConnection(into record: inout AccessRecord)

    /// Where it goes, and with which TLS context (identity, trust): a retry opens a fresh channel for the same.
    var key: PoolKey { get }
    var context: ClientTLSContext { get }
}

/// What a channel reports to whoever holds it: the exchange that uses it (`ClientConnection`), or the pool
/// while it is idle.
protocol UpstreamChannelOwner: AnyObject {
    /// The channel is ready (HTTP/1.1: TCP and TLS are up); the queued request is on its way.
    func upstreamConnected(_ channel: any UpstreamChannel)
    /// Response bytes arrived in `responseBuffer`.
    func upstreamReadable(_ channel: any UpstreamChannel)
    /// Queued request bytes were taken: `unsentRequestBytes` is at or below the low watermark.
    func upstreamWritable(_ channel: any UpstreamChannel)
    /// The channel ended (EOF, error, timeout, a failure to connect). The exchange then finishes, aborts or
    /// retries it.
    func upstreamEnded(_ channel: any UpstreamChannel, _ event: UpstreamEvent)
    /// The channel gave the exchange to `new` before sending anything of it, the request bytes queued moved
    /// along (`protocol = "auto"` and the server selected HTTP/1.1: the HTTP/2 stream hands over to an HTTP/1.1
    /// connection). The owner uses `new` from now on; `old` is over.
    func upstreamReplaced(_ old: any UpstreamChannel, by new: any UpstreamChannel)
}

extension UpstreamChannelOwner {
    /// Only an exchange takes a replacement; anyone else ends it.
    func upstreamReplaced(_ old: any UpstreamChannel, by new: any UpstreamChannel) { new.abort() }
}

enum UpstreamChannelState { case connecting, ready, closed }

/// How an upstream channel ended, or failed to start.
enum UpstreamEvent {
    /// The connection closed (EOF): `closeNotify` when the server ended TLS with close_notify, false for a
    /// bare FIN, which may be a truncation.
    case eof(closeNotify: Bool)
    /// A socket or TLS error.
    case error(errno: Int32, tls: [OpenSSLErrorEntry], dnsError: Int32)
    /// The read timeout (response or idle) passed.
    case readTimeout
    /// Connect plus handshake did not finish in time.
    case connectTimeout
    /// The SSRF guard refused every address the name resolved to (or the literal address).
    case prohibited(address: String, reason: String)
    /// The corporate proxy of the route's egress did not open the tunnel.
    case corporateProxy(CorporateProxyFailure)
}

/// A failure before any response head, as the client gets it and the metrics count it.
struct UpstreamChannelFailure {
    var response: ProxyErrorResponse
    /// The `reason` label of the failed-upstream counter.
    var metricReason: String
    /// Logged as a warning too (the proxy's own trust refusal of the server).
    var warn: Bool
}
