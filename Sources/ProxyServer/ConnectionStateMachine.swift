import HTTP1

/// A monotonic clock in milliseconds: the real one in the server, a fake one in tests.
protocol MonotonicClock {
    var nowMillis: Int { get }
}

struct SystemClock: MonotonicClock {
    var nowMillis: Int { monotonicMillis() }
}

/// How far the exchange in progress has got, as the connection's life depends on it. The connection machine
/// keeps no copy: the shell reads it from the exchange's message states (`Exchange.progress`) with each event
/// that needs it.
struct ExchangeProgress: Equatable {
    /// The whole request body has been read (or the request has none).
    var requestComplete: Bool
    /// The final response head, or a 101, went to the client: an error can no longer be answered. Interim
    /// responses (100 Continue) do not count.
    var responseStarted: Bool

    /// No exchange in progress.
    static let none = ExchangeProgress(requestComplete: false, responseStarted: false)
}

/// What a tunnel holds while it is set up or runs, as the connection's states carry it: the dialler of a blind
/// tunnel's TCP connection, a tunnel answered 200 that waits for its first bytes, the relay that moves bytes both
/// ways. The server's are `ClientTunnelResources` (libevent objects); tests use plain values, so the machine stays
/// socket-free.
protocol TunnelResources {
    associatedtype Dialer: AnyObject
    associatedtype Opened: AnyObject
    associatedtype Relay: AnyObject
}

/// The life of one client connection, apart from libevent and OpenSSL: each event is a mutating function that
/// returns the one action the shell (`ClientConnection`) carries out. Each state carries its own payload, so a
/// field that means nothing in a state does not exist in it; the tunnel's resources (`TunnelResources`) are such
/// payloads, so which one the connection holds is its state, never a guess from which optional is set.
///
/// Ownership of those resources: a resource enters the machine with the transition that starts its state
/// (`tunnelDialling`, `tunnelOpened`, `relayStarted`) and leaves it only through a transition that hands it back
/// to the shell (`tunnelDialled`, `tunnelBytesArrived`, `relayEnded`, `aborted`): the machine never drops one.
/// An event that ends the connection in a state holding one (the client's EOF while dialling, say) returns
/// `.abort` and leaves the state as it is: the shell's teardown calls `aborted()`, which closes the machine and
/// hands the resource over to be released, once.
///
/// ```
///                  head bytes (arm header_timeout)
///    ┌──────────► awaitingHead(deadline?, scan) ─────────────────────────┐ idle client_timeout, EOF or error:
///    │                 │ headParsed                                       │ abort, then aborted()
///    │ exchangeEnded   ▼                                                  ▼
///    │ (keep-alive) exchanging(flow) ─── exchangeFailed after the response began, responseTruncated:
///    └────────────── │  │  │  │           abort(reset), then aborted() ───────────────────────► closed
///                    │  │  │  └─ CONNECT (blind): tunnelDialling ──► dialling(dialer)            ▲ ▲
///                    │  │  │     ◄── tunnelDialled (refused: answered; connected: a relay)        │ │
///                    │  │  └─ after tunnelDialled, or a 101: relayStarted ──► relaying(relay) ───┘ │
///                    │  │                                          relayEnded, or aborted()        │
///                    │  └─ CONNECT, 200: tunnelOpened ──► awaitingTunnelBytes(opened)              │
///                    │     ◄── tunnelBytesArrived (then servingInsideTunnel: TLS or plain, back     │
///                    │         to awaitingHead; or a refusal, answered and closed)                  │
///                    │ exchangeEnded (close), answerRequestTimeout                                  │
///                    ▼                                                                              │
///            closing(.flushing) ── flushed ──► closing(.lingering(until)) ── EOF / timer ───────────┘
///       (every layer flushed, close_notify, FIN)   (read and discard until the deadline)
/// ```
/// In `dialling` and `awaitingTunnelBytes` the client's EOF or error (and client_timeout, once a tunnel is
/// opened; while dialling it only resumes reading) returns `.abort`, and `aborted()` hands the resource back as it
/// closes the machine; but an EOF while dialling after bytes for the tunnel is a half-close, and the dial goes on.
/// In `relaying` the relay hears the client itself.
struct ConnectionStateMachine<Clock: MonotonicClock, Tunnel: TunnelResources> {
    enum State {
        /// Between requests. `headDeadline` is set once part of a head has arrived: header_timeout runs from there.
        /// `scan` is how far the search for the end of that head has got (the head stays in the input until it is
        /// complete), so a trickled head costs linear time.
        case awaitingHead(headDeadline: Int?, scan: HeadParser.Scan)
        /// A request is being served.
        case exchanging(ExchangeFlow)
        /// Waiting for a blind tunnel's TCP connection, which `dialer` makes.
        case dialling(Tunnel.Dialer)
        /// A tunnel was answered 200 and waits for the client's first bytes, which say how it is served (TLS to
        /// intercept, or plain HTTP requests); client_timeout applies.
        case awaitingTunnelBytes(Tunnel.Opened)
        /// Bytes flow both ways through a relay, which owns both sides until it ends.
        case relaying(Tunnel.Relay)
        /// Our last bytes are flushed through every layer (TLS close_notify included) before the FIN; then the
        /// connection is read a moment longer so that the close does not reset what the client has not read yet.
        case closing(Closing)
        case closed
    }

    /// What the connection decides about the exchange in progress. How far its request and response have got
    /// is not kept here: it is the exchange's (`ExchangeProgress`, read from its message states with each event
    /// that depends on it).
    struct ExchangeFlow: Equatable {
        /// Both the client and the proxy allow another request on this connection.
        var keepAlive: Bool
        /// The client shut down its sending side after a complete request (RFC 9112 §9.6): serve, then close.
        var clientHalfClosed = false
        /// Reading the client stopped: the upstream holds too much of the request body unsent.
        var clientPaused = false
        /// Reading the upstream stopped: the client holds too much of the response unsent.
        var upstreamPaused = false
    }

    /// A side of the exchange whose reading stops for backpressure.
    enum Side { case client, upstream }

    enum Closing: Equatable {
        case flushing
        case lingering(until: Int)
    }

    /// Why a request timed out, for the 408's text.
    enum RequestTimeout: Equatable {
        case head, headTrickled, body
    }

    enum Action: Equatable {
        case none
        /// A client_timeout that ends nothing: read on (libevent stopped reading when it fired).
        case resumeReading
        /// Arm the connection's timer for this deadline (milliseconds on the machine's clock).
        case armTimer(deadline: Int)
        /// Back between requests: re-arm client_timeout and parse any pipelined head already received.
        case readNextHead
        /// Answer 408 (nothing of a response went out), then `exchangeEnded(keepAlive: false)`.
        case answerRequestTimeout(RequestTimeout)
        /// Stop reading; flush every layer; then report `flushed()`.
        case closeAfterFlush
        /// Everything is out and the write side is shut: read (discarding) until the deadline, then close.
        case linger(until: Int)
        /// Close now. When a response was cut short, the close is a reset, so it cannot pass for a complete body.
        case abort(reset: Bool)
    }

    private(set) var state: State = .awaitingHead(headDeadline: nil, scan: HeadParser.Scan())
    var clock: Clock
    let headerTimeoutMillis: Int
    let clientTimeoutMillis: Int
    let lingerMillis: Int
    /// When the connection last became idle (accepted, or a response ended): client_timeout counts from there.
    private(set) var idleSince: Int
    /// What the connection serves: its listener's kind, until a tunnel's first bytes make it the requests inside
    /// that tunnel (`servingInsideTunnel`, the one transition that changes it).
    private(set) var serving: ListenerKind

    init(clock: Clock, serving: ListenerKind = .forward, headerTimeoutMillis: Int, clientTimeoutMillis: Int, lingerMillis: Int = 2000) {
        self.clock = clock
        self.serving = serving
        self.headerTimeoutMillis = headerTimeoutMillis
        self.clientTimeoutMillis = clientTimeoutMillis
        self.lingerMillis = lingerMillis
        self.idleSince = clock.nowMillis
    }

    var isAwaitingHead: Bool {
        if case .awaitingHead = state { return true }
        return false
    }

    var isExchanging: Bool {
        if case .exchanging = state { return true }
        return false
    }

    var flow: ExchangeFlow? {
        if case .exchanging(let flow) = state { return flow }
        return nil
    }

    // MARK: events from the client

    /// How far the search for the end of the next head has got.
    var headScan: HeadParser.Scan {
        if case .awaitingHead(_, let scan) = state { return scan }
        return HeadParser.Scan()
    }

    /// Part of a head is in the buffer, not all of it; `scan` is where its search stopped.
    mutating func headIncomplete(_ scan: HeadParser.Scan) -> Action {
        guard case .awaitingHead(let deadline, _) = state else { return .none }
        if let deadline {
            state = .awaitingHead(headDeadline: deadline, scan: scan)
            return .none
        }
        let until = clock.nowMillis + headerTimeoutMillis
        state = .awaitingHead(headDeadline: until, scan: scan)
        return .armTimer(deadline: until)
    }

    /// A request head was parsed. Nothing to do: client_timeout stays armed as the socket's read timeout the
    /// whole time (re-arming it per request would cost a timer update), and `clientTimedOut` decides what a
    /// timeout means from how far the exchange has got.
    mutating func headParsed(keepAlive: Bool) {
        guard case .awaitingHead = state else { preconditionFailure("head parsed in \(state)") }
        state = .exchanging(ExchangeFlow(keepAlive: keepAlive))
    }

    /// The response allows keep-alive or not (its head, or a 101, is going to the client).
    mutating func responseKeepAlive(_ keepAlive: Bool) {
        guard case .exchanging(var flow) = state else { return }
        flow.keepAlive = flow.keepAlive && keepAlive
        state = .exchanging(flow)
    }

    /// Reading `side` stopped (backpressure).
    mutating func paused(_ side: Side) {
        guard case .exchanging(var flow) = state else { return }
        switch side {
        case .client: flow.clientPaused = true
        case .upstream: flow.upstreamPaused = true
        }
        state = .exchanging(flow)
    }

    /// Whether reading `side` is stopped for backpressure.
    func isPaused(_ side: Side) -> Bool {
        guard case .exchanging(let flow) = state else { return false }
        return side == .client ? flow.clientPaused : flow.upstreamPaused
    }

    /// The other side drained: reading `side` goes on. False when it was not paused (nothing to do).
    mutating func resumed(_ side: Side) -> Bool {
        guard isPaused(side), case .exchanging(var flow) = state else { return false }
        switch side {
        case .client: flow.clientPaused = false
        case .upstream: flow.upstreamPaused = false
        }
        state = .exchanging(flow)
        return true
    }

    /// The client's EOF (a FIN). `tunnelBytesWaiting`: the client sent bytes after a CONNECT that wait, unread, for
    /// the tunnel being dialled.
    mutating func clientEOF(_ progress: ExchangeProgress, tunnelBytesWaiting: Bool = false) -> Action {
        switch state {
        case .awaitingHead:
            // Idle: a normal end. A partial head: it will never be complete.
            state = .closed
            return .abort(reset: false)
        case .exchanging(var flow):
            if progress.requestComplete {
                // A half-close (RFC 9112 §9.6): the response is still owed. A client that went away entirely
                // sends the same FIN, so it is found out only when the response is written to it (a reset);
                // while the upstream connects (or its handshake waits for a token signature) there is nothing to
                // write yet. A client's reset is an error (`clientError`) and ends the exchange at once.
                flow.clientHalfClosed = true
                flow.keepAlive = false
                state = .exchanging(flow)
                return .none
            }
            state = .closed
            return .abort(reset: false)
        case .closing(.flushing):
            return .none
        case .closing(.lingering):
            state = .closed
            return .abort(reset: false)
        case .dialling where tunnelBytesWaiting:
            // A half-close inside the tunnel-to-be: the client sent what it had for the service and shut its write
            // half, and wants the answer (RFC 9110 §9.3.6: a tunnel carries each direction's end). The dial goes
            // on; the stream reads no more, and the relay meets the FIN again in the socket after those bytes. A
            // FIN with nothing sent is taken as the client leaving: the dial ends at once.
            return .none
        case .dialling, .awaitingTunnelBytes:
            return .abort(reset: false)  // the state keeps its resource for `aborted()`
        case .relaying, .closed:
            return .none
        }
    }

    /// A socket or TLS error on the client's connection: nothing more can be delivered.
    mutating func clientError() -> Action {
        switch state {
        case .relaying, .closed: return .none
        case .dialling, .awaitingTunnelBytes: return .abort(reset: false)  // the state keeps its resource for `aborted()`
        default:
            state = .closed
            return .abort(reset: false)
        }
    }

    /// TLS with the client failed during the handshake (interception): the alert OpenSSL queued for the client
    /// is flushed before the close, so the client learns why (unrecognized_name, for instance).
    mutating func clientTLSFailed() -> Action {
        guard case .awaitingHead = state else { return clientError() }
        state = .closing(.flushing)
        return .closeAfterFlush
    }

    /// client_timeout passed with nothing read. libevent reports it through a deferred callback, so it may come
    /// after another event of the same loop turn ended an exchange: such a stale report ends nothing.
    mutating func clientTimedOut(_ progress: ExchangeProgress) -> Action {
        switch state {
        case .awaitingHead(let deadline, _):
            if deadline != nil { return .answerRequestTimeout(.head) }
            if clock.nowMillis - idleSince < clientTimeoutMillis { return .resumeReading }
            state = .closed
            return .abort(reset: false)
        case .exchanging:
            if progress.requestComplete { return .resumeReading }
            if !progress.responseStarted { return .answerRequestTimeout(.body) }
            state = .closed
            return .abort(reset: true)
        case .closing(.lingering):
            state = .closed
            return .abort(reset: false)
        case .awaitingTunnelBytes:
            return .abort(reset: false)  // the state keeps its resource for `aborted()`
        case .dialling:
            // client_timeout does not apply while the tunnel is dialled (connect_timeout does), but the client is
            // read on, so that its departure ends the dial.
            return .resumeReading
        case .closing(.flushing), .relaying, .closed:
            return .none
        }
    }

    /// The connection's timer fired.
    mutating func timerFired() -> Action {
        let now = clock.nowMillis
        switch state {
        case .awaitingHead(let deadline?, _) where now >= deadline:
            return .answerRequestTimeout(.headTrickled)
        case .awaitingHead(let deadline?, _):
            return .armTimer(deadline: deadline)
        case .closing(.lingering(let until)) where now >= until:
            state = .closed
            return .abort(reset: false)
        case .closing(.lingering(let until)):
            return .armTimer(deadline: until)
        default:
            return .none
        }
    }

    // MARK: events from the exchange

    /// The exchange is over (the response is complete, or an answer of the proxy's own is queued).
    mutating func exchangeEnded(keepAlive: Bool) -> Action {
        switch state {
        case .exchanging(let flow):
            if flow.keepAlive && keepAlive && !flow.clientHalfClosed {
                state = .awaitingHead(headDeadline: nil, scan: HeadParser.Scan())
                idleSince = clock.nowMillis
                return .readNextHead
            }
            state = .closing(.flushing)
            return .closeAfterFlush
        case .dialling, .awaitingTunnelBytes:
            // A tunnel's answer comes once its resource is handed back (`tunnelDialled`, `tunnelBytesArrived`).
            preconditionFailure("exchange ended in \(state) without the tunnel's resource handed back")
        case .awaitingHead:
            // An answer to a head that never made an exchange (a parse error, a head timeout).
            if keepAlive {
                state = .awaitingHead(headDeadline: nil, scan: HeadParser.Scan())
                idleSince = clock.nowMillis
                return .readNextHead
            }
            state = .closing(.flushing)
            return .closeAfterFlush
        case .closing, .closed, .relaying:
            return .none
        }
    }

    /// What the exchange's failure means for the connection: its own action set, as nothing else can follow it.
    enum FailureAction: Equatable {
        /// No response byte went out: answer the error (the answer then ends the exchange).
        case answer
        /// The response began: the client connection is cut with a reset, so the response cannot pass as complete.
        case abort(reset: Bool)
        /// The connection is past the exchange (closing or closed): nothing to do.
        case none
    }

    /// The exchange failed (the upstream failed, or the request body turned out invalid). Before any response
    /// byte the proxy answers; after, the client connection is cut.
    mutating func exchangeFailed(_ progress: ExchangeProgress) -> FailureAction {
        guard case .exchanging = state else { return .none }
        if !progress.responseStarted { return .answer }
        state = .closed
        return .abort(reset: true)
    }

    /// The response cannot be completed (the upstream cut it short, or sent invalid framing mid-body).
    mutating func responseTruncated() -> Action {
        guard case .exchanging = state else { return .none }
        state = .closed
        return .abort(reset: true)
    }

    /// A CONNECT goes to a blind tunnel: the answer waits for the TCP connection `dialer` makes.
    mutating func tunnelDialling(_ dialer: Tunnel.Dialer) {
        guard case .exchanging = state else { preconditionFailure("tunnel dialled in \(state)") }
        state = .dialling(dialer)
    }

    /// The dialler reported (connected, or failed; it let go of its own resources as it did): it is handed back
    /// and the CONNECT's exchange goes on, to be answered (a failure) or relayed (`relayStarted`); the answer
    /// closes the connection. Nil when the machine holds no dialler (it was aborted meanwhile).
    mutating func tunnelDialled() -> Tunnel.Dialer? {
        guard case .dialling(let dialer) = state else { return nil }
        state = .exchanging(ExchangeFlow(keepAlive: false))
        return dialer
    }

    /// A tunnel, or an upgrade, hands the client's bytes to `relay`, which owns both sides from now on.
    mutating func relayStarted(_ relay: Tunnel.Relay) {
        guard case .exchanging = state else { preconditionFailure("relay started in \(state)") }
        state = .relaying(relay)
    }

    /// The relay ended (it freed both sides itself): it is handed back, and the connection is closed. Nil when the
    /// machine holds no relay (`aborted()` handed it over already, and the shell is closing it).
    mutating func relayEnded() -> Tunnel.Relay? {
        guard case .relaying(let relay) = state else { return nil }
        state = .closed
        return relay
    }

    /// The CONNECT was answered 200; the client's first bytes inside will choose how the tunnel is served, with
    /// what `opened` prepared for it.
    mutating func tunnelOpened(_ opened: Tunnel.Opened) {
        guard case .exchanging = state else { preconditionFailure("tunnel opened in \(state)") }
        state = .awaitingTunnelBytes(opened)
    }

    /// The client's first bytes inside an opened tunnel arrived: the opened tunnel is handed back to choose how it
    /// is served, and the CONNECT's exchange goes on until it chose (`servingInsideTunnel`, or a refusal answered,
    /// which closes the connection). Nil when no opened tunnel waits.
    mutating func tunnelBytesArrived() -> Tunnel.Opened? {
        guard case .awaitingTunnelBytes(let opened) = state else { return nil }
        state = .exchanging(ExchangeFlow(keepAlive: false))
        return opened
    }

    /// The tunnel's first bytes chose interception (TLS with the client begins) or plain requests: the requests
    /// inside start afresh, each an exchange of its own, served as `kind` (which changes only here).
    mutating func servingInsideTunnel(as kind: ListenerKind) {
        guard case .exchanging = state else { preconditionFailure("tunnel served in \(state)") }
        serving = kind
        state = .awaitingHead(headDeadline: nil, scan: HeadParser.Scan())
        idleSince = clock.nowMillis
    }

    // MARK: closing

    /// Every layer is flushed and the write side shut: linger.
    mutating func flushed() -> Action {
        guard case .closing(.flushing) = state else { return .none }
        let until = clock.nowMillis + lingerMillis
        state = .closing(.lingering(until: until))
        return .linger(until: until)
    }

    /// Graceful shutdown: an idle connection closes now, a busy one after its response.
    mutating func drain() -> Action {
        switch state {
        case .awaitingHead(nil, _):
            state = .closed
            return .abort(reset: false)
        case .exchanging(var flow):
            flow.keepAlive = false
            state = .exchanging(flow)
            return .none
        default:
            return .none
        }
    }

    /// What a state handed back when the machine was aborted: the shell releases it (a dialler cancelled, a
    /// relay closed, which frees the client's side with its own).
    enum Held {
        case nothing
        case dialer(Tunnel.Dialer)
        case opened(Tunnel.Opened)
        case relay(Tunnel.Relay)
    }

    /// The shell closes the connection (it carries out `.abort`, or fails itself): the machine is closed from now
    /// on, and hands back the tunnel resource its state held, for the shell to release. Once closed, it hands
    /// back nothing more: each resource leaves the machine once.
    mutating func aborted() -> Held {
        let held: Held
        switch state {
        case .dialling(let dialer): held = .dialer(dialer)
        case .awaitingTunnelBytes(let opened): held = .opened(opened)
        case .relaying(let relay): held = .relay(relay)
        default: held = .nothing
        }
        state = .closed
        return held
    }
}

extension ConnectionStateMachine.State: Equatable where Tunnel.Dialer: Equatable, Tunnel.Opened: Equatable, Tunnel.Relay: Equatable {}

extension ConnectionStateMachine.State {
    /// Why the client's side ended an exchange caught in this state (its EOF, error or client_timeout), for the
    /// access record's proxy_status.
    func clientLoss(timedOut: Bool) -> String {
        switch self {
        case .dialling:
            return "client closed the connection before the tunnel was open"  // client_timeout does not apply while dialling
        case .awaitingTunnelBytes:
            return timedOut ? "client sent nothing in the tunnel within client_timeout" : "client closed the tunnel before sending anything in it"
        default:
            // A timeout only ends an exchange once its response began (before, a stalled body is answered 408).
            return timedOut ? "the request body stalled for client_timeout after the response began"
                            : "client closed the connection before the response completed"
        }
    }
}
