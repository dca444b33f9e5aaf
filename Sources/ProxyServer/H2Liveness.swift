/// When an HTTP/2 upstream connection is checked with a PING, when it counts as dead, and when it closes for being
/// idle (docs/http2.md, "Idle connections and PING"). Pure: times are milliseconds on a monotonic clock, passed
/// in; the connection arms one timer for `deadline` and carries out what `timerFired` returns.
///
/// - An idle connection (no stream) that has heard nothing from the server for `pingInterval` is sent a PING.
///   Anything the server sends counts as an answer (the ACK, a frame of its own): a server that sends anything
///   is alive, as Envoy's `connection_keepalive` reads it.
/// - No answer within `pingTimeout`: the connection is retired (`.retire`), and no stream ever opens on it.
/// - A stream that comes while a PING is unanswered, or to a connection silent for longer than `pingInterval`
///   (a PING first), waits for the answer (`admit`): a request is never sent on a connection whose liveness is
///   in question, and goes to another connection when this one is retired.
/// - The idle timeout counts from the moment the last stream ended, whatever PINGs are answered since.
struct H2Liveness: Equatable {
    /// nil: `h2_ping_interval = "off"`, no PING is ever sent.
    let pingInterval: Int?
    let pingTimeout: Int
    let idleTimeout: Int

    /// When the server was last heard from.
    private(set) var lastHeard: Int
    /// Since when the connection carries no stream; nil while it carries some.
    private(set) var idleSince: Int?
    /// When the PING not answered yet went out.
    private(set) var pingSentAt: Int?

    init(pingInterval: Int?, pingTimeout: Int, idleTimeout: Int, now: Int) {
        self.pingInterval = pingInterval
        self.pingTimeout = pingTimeout
        self.idleTimeout = idleTimeout
        lastHeard = now
        idleSince = now
    }

    enum Action: Equatable {
        case nothing
        /// Send a PING now.
        case sendPing
        /// The idle timeout passed: close the connection.
        case closeIdle
        /// The PING went unanswered: retire the connection (its waiting streams go elsewhere).
        case retire
    }

    enum Admission: Equatable {
        /// The stream may open.
        case open
        /// A PING is out: the stream waits for its answer.
        case wait
        /// The server has been silent too long: send a PING, and the stream waits for its answer.
        case ping
    }

    /// Anything arrived from the server: it is alive, and an outstanding PING is answered.
    mutating func heard(now: Int) {
        lastHeard = now
        pingSentAt = nil
    }

    /// The connection carries a stream (opened or about to).
    mutating func busy() {
        idleSince = nil
    }

    /// The connection's last stream ended.
    mutating func idle(now: Int) {
        if idleSince == nil { idleSince = now }
    }

    /// Whether a stream may open now on a connection that has no stream open.
    mutating func admit(now: Int) -> Admission {
        if pingSentAt != nil { return .wait }
        if let interval = pingInterval, now - lastHeard >= interval {
            pingSentAt = now
            return .ping
        }
        return .open
    }

    /// Whether the connection carries no stream.
    var isIdle: Bool { idleSince != nil }

    /// Whether a PING is out and not answered.
    var awaitingAnswer: Bool { pingSentAt != nil }

    /// When the connection's timer should fire next; nil for no timer.
    var deadline: Int? {
        var next: Int?
        func consider(_ t: Int) { next = min(next ?? t, t) }
        if let sent = pingSentAt { consider(sent + pingTimeout) }
        if let since = idleSince {
            consider(since + idleTimeout)
            if pingSentAt == nil, let interval = pingInterval { consider(lastHeard + interval) }
        }
        return next
    }

    mutating func timerFired(now: Int) -> Action {
        if let sent = pingSentAt, now >= sent + pingTimeout { return .retire }
        guard let since = idleSince else { return .nothing }
        if now >= since + idleTimeout { return .closeIdle }
        if pingSentAt == nil, let interval = pingInterval, now - lastHeard >= interval {
            pingSentAt = now
            return .sendPing
        }
        return .nothing
    }
}
