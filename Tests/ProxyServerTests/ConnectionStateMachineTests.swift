import HTTP1
import Testing
@testable import ProxyServer

/// The connection state machine, driven without sockets and with a fake clock.
struct FakeClock: MonotonicClock {
    var nowMillis = 1_000
}

/// A tunnel resource as the machine holds it, without sockets: equal only to itself.
final class FakeResource: Equatable, CustomStringConvertible {
    let description: String
    init(_ name: String) { description = name }
    static func == (a: FakeResource, b: FakeResource) -> Bool { a === b }
}

enum FakeTunnel: TunnelResources {
    typealias Dialer = FakeResource
    typealias Opened = FakeResource
    typealias Relay = FakeResource
}

typealias Machine = ConnectionStateMachine<FakeClock, FakeTunnel>

/// How far the exchange has got, as `Exchange.progress` reports it to the machine.
private let bodyDue = ExchangeProgress(requestComplete: false, responseStarted: false)
private let responseOwed = ExchangeProgress(requestComplete: true, responseStarted: false)
private let responseFlowing = ExchangeProgress(requestComplete: true, responseStarted: true)
private let bodyDueAfterResponse = ExchangeProgress(requestComplete: false, responseStarted: true)

private func machine() -> Machine {
    Machine(clock: FakeClock(), headerTimeoutMillis: 5_000, clientTimeoutMillis: 60_000, lingerMillis: 2_000)
}

@Suite struct ConnectionStateMachineTests {
    @Test func keepAliveExchangeReturnsToAwaitingHead() {
        var m = machine()
        m.headParsed(keepAlive: true)
        m.responseKeepAlive(true)  // the final head goes out
        #expect(m.exchangeEnded(keepAlive: true) == .readNextHead)
        #expect(m.state == .awaitingHead(headDeadline: nil, scan: HeadParser.Scan()))
    }

    @Test func trickledHeadArmsHeaderTimeoutOnceAndAnswers408AtTheDeadline() {
        var m = machine()
        #expect(m.headIncomplete(HeadParser.Scan()) == .armTimer(deadline: 6_000))
        m.clock.nowMillis = 3_000
        #expect(m.headIncomplete(HeadParser.Scan()) == .none)  // the deadline runs from the first byte, not the last
        #expect(m.timerFired() == .armTimer(deadline: 6_000))
        m.clock.nowMillis = 6_000
        #expect(m.timerFired() == .answerRequestTimeout(.headTrickled))
        #expect(m.exchangeEnded(keepAlive: false) == .closeAfterFlush)
    }

    @Test func idleClientTimeoutClosesQuietly() {
        var m = machine()
        m.clock.nowMillis += 60_000
        #expect(m.clientTimedOut(.none) == .abort(reset: false))
        #expect(m.state == .closed)
    }

    /// A client_timeout reported (through libevent's deferred callbacks) in the same loop turn as the end of a
    /// response is stale: the response just queued must not be dropped by an idle close.
    @Test func staleIdleTimeoutRightAfterAResponseIsIgnored() {
        var m = machine()
        m.headParsed(keepAlive: true)
        m.clock.nowMillis += 120_000  // a slow upstream: two client_timeouts passed while the response was owed
        #expect(m.clientTimedOut(responseOwed) == .resumeReading)
        m.responseKeepAlive(true)  // the final head goes out
        #expect(m.exchangeEnded(keepAlive: true) == .readNextHead)
        #expect(m.clientTimedOut(responseFlowing) == .resumeReading)
        #expect(m.isAwaitingHead)
        m.clock.nowMillis += 60_000
        #expect(m.clientTimedOut(responseFlowing) == .abort(reset: false))
    }

    /// Issue 10 point 2: client_timeout never cuts a response that is owed or flowing.
    @Test func clientTimeoutIsIgnoredWhileAResponseIsOwed() {
        var m = machine()
        m.headParsed(keepAlive: true)
        #expect(m.clientTimedOut(responseOwed) == .resumeReading)
        m.responseKeepAlive(true)  // the final head goes out
        #expect(m.clientTimedOut(responseFlowing) == .resumeReading)
        #expect(m.isExchanging)
    }

    /// Issue 15 point 9: a stalled request body is answered 408 while nothing of the response went out.
    @Test func stalledRequestBodyGets408() {
        var m = machine()
        m.headParsed(keepAlive: true)
        #expect(m.clientTimedOut(bodyDue) == .answerRequestTimeout(.body))
        #expect(m.exchangeEnded(keepAlive: false) == .closeAfterFlush)
    }

    @Test func stalledRequestBodyAfterTheResponseStartedIsCut() {
        var m = machine()
        m.headParsed(keepAlive: true)
        m.responseKeepAlive(true)  // the final head goes out
        #expect(m.clientTimedOut(bodyDueAfterResponse) == .abort(reset: true))
    }

    /// client_timeout stays armed while the body is read and after: a timeout that comes once the whole body
    /// went upstream (a response is owed) resumes reading instead of answering 408.
    @Test func aClientTimeoutAfterTheBodyIsCompleteEndsNothing() {
        var m = machine()
        m.headParsed(keepAlive: true)
        #expect(m.clientTimedOut(responseOwed) == .resumeReading)
        #expect(m.isExchanging)
    }

    /// Issue 10 point 9: a client that half-closes after a complete request is served, then closed.
    @Test func halfClosedClientIsServedThenClosed() {
        var m = machine()
        m.headParsed(keepAlive: true)
        #expect(m.clientEOF(responseOwed) == .none)
        #expect(m.flow?.clientHalfClosed == true)
        m.responseKeepAlive(true)  // the final head goes out
        #expect(m.exchangeEnded(keepAlive: true) == .closeAfterFlush)
    }

    @Test func eofDuringTheRequestBodyAborts() {
        var m = machine()
        m.headParsed(keepAlive: true)
        #expect(m.clientEOF(bodyDue) == .abort(reset: false))
        #expect(m.state == .closed)
    }

    /// Issue 10 point 1: every close flushes, then lingers with its own deadline, then closes.
    @Test func closeFlushesThenLingersUntilTheDeadline() {
        var m = machine()
        m.headParsed(keepAlive: false)
        m.responseKeepAlive(false)  // the final head goes out
        #expect(m.exchangeEnded(keepAlive: true) == .closeAfterFlush)
        #expect(m.clientEOF(responseFlowing) == .none)  // the client's FIN does not stop the flush
        #expect(m.flushed() == .linger(until: 3_000))
        m.clock.nowMillis = 2_000
        #expect(m.timerFired() == .armTimer(deadline: 3_000))
        m.clock.nowMillis = 3_000
        #expect(m.timerFired() == .abort(reset: false))
        #expect(m.state == .closed)
    }

    @Test func eofWhileLingeringCloses() {
        var m = machine()
        m.headParsed(keepAlive: false)
        _ = m.exchangeEnded(keepAlive: false)
        _ = m.flushed()
        #expect(m.clientEOF(responseOwed) == .abort(reset: false))
    }

    /// Issue 10 point 4: an upstream failure before any response byte is answered, never a bare close.
    @Test func upstreamFailureBeforeTheResponseIsAnswered() {
        var m = machine()
        m.headParsed(keepAlive: true)
        #expect(m.exchangeFailed(responseOwed) == .answer)
        #expect(m.exchangeEnded(keepAlive: true) == .readNextHead)
    }

    /// Issue 10 point 5: a response cut short ends in a reset, never in a clean end.
    @Test func truncatedResponseResets() {
        var m = machine()
        m.headParsed(keepAlive: true)
        m.responseKeepAlive(true)  // the final head goes out
        #expect(m.exchangeFailed(responseFlowing) == .abort(reset: true))
        var n = machine()
        n.headParsed(keepAlive: true)
        n.responseKeepAlive(true)  // the final head goes out
        #expect(n.responseTruncated() == .abort(reset: true))
    }

    @Test func responseWithoutKeepAliveCloses() {
        var m = machine()
        m.headParsed(keepAlive: true)
        m.responseKeepAlive(false)  // the final head goes out
        #expect(m.exchangeEnded(keepAlive: true) == .closeAfterFlush)
    }

    @Test func errorAnswerToAnUnparsedHead() {
        var m = machine()
        _ = m.headIncomplete(HeadParser.Scan())
        #expect(m.exchangeEnded(keepAlive: false) == .closeAfterFlush)
        #expect(m.state == .closing(.flushing))
    }

    @Test func tunnelLifecycle() {
        var m = machine()
        let dialer = FakeResource("dialer"), relay = FakeResource("relay")
        m.headParsed(keepAlive: true)
        m.tunnelDialling(dialer)
        #expect(m.state == .dialling(dialer))
        #expect(m.clientTimedOut(responseOwed) == .resumeReading)  // read on: the client's departure ends the dial
        #expect(m.tunnelDialled() === dialer)  // handed back once it reported
        #expect(m.tunnelDialled() == nil)
        m.relayStarted(relay)
        #expect(m.state == .relaying(relay))
        #expect(m.clientEOF(responseOwed) == .none)  // the relay owns the client's side now
        #expect(m.relayEnded() === relay)
        #expect(m.state == .closed)
        #expect(m.relayEnded() == nil)
        guard case .nothing = m.aborted() else { Issue.record("a closed machine handed something back"); return }
    }

    @Test func refusedTunnelClosesAfterTheAnswer() {
        var m = machine()
        m.headParsed(keepAlive: true)
        m.tunnelDialling(FakeResource("dialer"))
        _ = m.tunnelDialled()  // it reported a failure
        #expect(m.exchangeEnded(keepAlive: true) == .closeAfterFlush)
    }

    @Test func eofWhileDiallingAbortsAndTheDialerIsHandedBack() {
        var m = machine()
        let dialer = FakeResource("dialer")
        m.headParsed(keepAlive: true)
        m.tunnelDialling(dialer)
        #expect(m.clientEOF(responseOwed) == .abort(reset: false))
        #expect(m.state == .dialling(dialer))  // kept until the shell's teardown takes it
        guard case .dialer(let held) = m.aborted() else { Issue.record("the dialler was not handed back"); return }
        #expect(held === dialer)
        #expect(m.state == .closed)
        #expect(m.tunnelDialled() == nil)  // a late report finds nothing to hand back
    }

    @Test func aFinAfterBytesForTheTunnelIsAHalfCloseAndTheDialGoesOn() {
        var m = machine()
        let dialer = FakeResource("dialer"), relay = FakeResource("relay")
        m.headParsed(keepAlive: true)
        m.tunnelDialling(dialer)
        #expect(m.clientEOF(responseOwed, tunnelBytesWaiting: true) == .none)
        #expect(m.state == .dialling(dialer))
        #expect(m.tunnelDialled() === dialer)
        m.relayStarted(relay)  // the relay carries the bytes, then the FIN it finds in the socket
        #expect(m.relayEnded() === relay)
    }

    @Test func anOpenedTunnelWaitsForItsFirstBytesThenRequestsInsideStartAfresh() {
        var m = machine()
        let opened = FakeResource("opened")
        m.headParsed(keepAlive: true)
        m.tunnelOpened(opened)
        #expect(m.state == .awaitingTunnelBytes(opened))
        #expect(m.timerFired() == .none)
        m.clock.nowMillis = 4_000
        #expect(m.tunnelBytesArrived() === opened)
        #expect(m.tunnelBytesArrived() == nil)
        m.servingInsideTunnel(as: .plainTunnel(host: "a.example"))  // TLS to intercept, or plain requests: the same from here on
        #expect(m.state == .awaitingHead(headDeadline: nil, scan: HeadParser.Scan()))
        guard case .plainTunnel("a.example") = m.serving else { Issue.record("serving \(m.serving)"); return }
        #expect(m.idleSince == 4_000)
        #expect(m.headIncomplete(HeadParser.Scan()) == .armTimer(deadline: 9_000))
        m.headParsed(keepAlive: true)
        #expect(m.exchangeEnded(keepAlive: true) == .readNextHead)  // keep-alive inside the tunnel
    }

    @Test func aTunnelRefusedByItsFirstBytesClosesAfterTheAnswer() {
        var m = machine()
        m.headParsed(keepAlive: true)
        m.tunnelOpened(FakeResource("opened"))
        _ = m.tunnelBytesArrived()
        #expect(m.exchangeEnded(keepAlive: true) == .closeAfterFlush)
        #expect(m.state == .closing(.flushing))
    }

    @Test func anOpenedTunnelThatStaysSilentOrEndsIsClosed() {
        var silent = machine()
        silent.headParsed(keepAlive: true)
        silent.tunnelOpened(FakeResource("opened"))
        #expect(silent.clientTimedOut(responseOwed) == .abort(reset: false))
        _ = silent.aborted()
        #expect(silent.state == .closed)
        var gone = machine()
        gone.headParsed(keepAlive: true)
        gone.tunnelOpened(FakeResource("opened"))
        #expect(gone.clientEOF(responseOwed) == .abort(reset: false))
        var broken = machine()
        broken.headParsed(keepAlive: true)
        broken.tunnelOpened(FakeResource("opened"))
        #expect(broken.clientError() == .abort(reset: false))
    }

    @Test func drainClosesIdleAndFinishesBusyConnections() {
        var idle = machine()
        #expect(idle.drain() == .abort(reset: false))
        var busy = machine()
        busy.headParsed(keepAlive: true)
        #expect(busy.drain() == .none)
        #expect(busy.exchangeEnded(keepAlive: true) == .closeAfterFlush)
    }

    @Test func clientErrorAbortsAnythingButARelay() {
        var m = machine()
        m.headParsed(keepAlive: true)
        #expect(m.clientError() == .abort(reset: false))
        var r = machine()
        r.headParsed(keepAlive: true)
        r.relayStarted(FakeResource("relay"))
        #expect(r.clientError() == .none)
    }
}

@Suite struct UpstreamReuseTests {
    /// Issue 10 point 3: a connection whose last response may still be followed by stray bytes is not pooled.
    @Test func headResponsesAnnouncingABodyAreNotPooled() {
        #expect(!UpstreamReuse.mayPool(requestMethod: "HEAD", status: 200, announcesBody: true, closeDelimited: false,
                                      requestComplete: true, upstreamAllows: true))
        #expect(UpstreamReuse.mayPool(requestMethod: "HEAD", status: 200, announcesBody: false, closeDelimited: false,
                                     requestComplete: true, upstreamAllows: true))
        #expect(!UpstreamReuse.mayPool(requestMethod: "GET", status: 304, announcesBody: true, closeDelimited: false,
                                      requestComplete: true, upstreamAllows: true))
        #expect(!UpstreamReuse.mayPool(requestMethod: "GET", status: 204, announcesBody: true, closeDelimited: false,
                                      requestComplete: true, upstreamAllows: true))
    }

    @Test func ordinaryResponsesArePooledOnlyWhenBothSidesEndedCleanly() {
        #expect(UpstreamReuse.mayPool(requestMethod: "GET", status: 200, announcesBody: true, closeDelimited: false,
                                     requestComplete: true, upstreamAllows: true))
        #expect(!UpstreamReuse.mayPool(requestMethod: "GET", status: 200, announcesBody: true, closeDelimited: true,
                                      requestComplete: true, upstreamAllows: true))
        #expect(!UpstreamReuse.mayPool(requestMethod: "POST", status: 200, announcesBody: true, closeDelimited: false,
                                      requestComplete: false, upstreamAllows: true))
        #expect(!UpstreamReuse.mayPool(requestMethod: "GET", status: 200, announcesBody: true, closeDelimited: false,
                                      requestComplete: true, upstreamAllows: false))
    }
}

@Suite struct ConnectionStateMachineTLSTests {
    /// Issue 10 point 1: the alert of a failed interception handshake is flushed before the close.
    @Test func failedClientHandshakeFlushesItsAlert() {
        var m = machine()
        #expect(m.clientTLSFailed() == .closeAfterFlush)
        #expect(m.flushed() == .linger(until: 3_000))
    }

    @Test func tlsFailureMidExchangeAborts() {
        var m = machine()
        m.headParsed(keepAlive: true)
        #expect(m.clientTLSFailed() == .abort(reset: false))
    }
}
