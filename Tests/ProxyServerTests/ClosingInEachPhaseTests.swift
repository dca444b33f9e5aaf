import CEventTLS
import HTTP1
import Testing
@testable import ProxyServer

/// The client or the upstream going away in each phase of a connection and of an exchange, without sockets:
/// the connection's machine with a fake clock, the exchange with evbuffers from `evbuffer_new()`.
@Suite struct ClientClosingInEachPhaseTests {
    /// Where a connection can be when its client goes, and how far its exchange has got there.
    enum Phase: String, CaseIterable {
        case idle, partialHead, bodyDue, responseOwed, responseFlowing, bodyDueAfterResponse
        case dialling, awaitingTunnelBytes, relaying, flushing, lingering
    }

    static func machine(in phase: Phase) -> (Machine, ExchangeProgress) {
        var m = Machine(clock: FakeClock(), headerTimeoutMillis: 5_000, clientTimeoutMillis: 60_000, lingerMillis: 2_000)
        var progress = ExchangeProgress.none
        switch phase {
        case .idle:
            m.clock.nowMillis += 60_000  // a whole client_timeout of idleness
        case .partialHead:
            _ = m.headIncomplete(HeadParser.Scan())
        case .bodyDue:
            m.headParsed(keepAlive: true)
            progress = ExchangeProgress(requestComplete: false, responseStarted: false)
        case .responseOwed:
            m.headParsed(keepAlive: true)
            progress = ExchangeProgress(requestComplete: true, responseStarted: false)
        case .responseFlowing:
            m.headParsed(keepAlive: true)
            m.responseKeepAlive(true)
            progress = ExchangeProgress(requestComplete: true, responseStarted: true)
        case .bodyDueAfterResponse:
            m.headParsed(keepAlive: true)
            m.responseKeepAlive(false)
            progress = ExchangeProgress(requestComplete: false, responseStarted: true)
        case .dialling:
            m.headParsed(keepAlive: true)
            m.tunnelDialling(FakeResource("dialer"))
        case .awaitingTunnelBytes:
            m.headParsed(keepAlive: true)
            m.tunnelOpened(FakeResource("opened"))
        case .relaying:
            m.headParsed(keepAlive: true)
            m.tunnelDialling(FakeResource("dialer"))
            _ = m.tunnelDialled()
            m.relayStarted(FakeResource("relay"))
        case .flushing:
            m.headParsed(keepAlive: false)
            _ = m.exchangeEnded(keepAlive: false)
        case .lingering:
            m.headParsed(keepAlive: false)
            _ = m.exchangeEnded(keepAlive: false)
            _ = m.flushed()
        }
        return (m, progress)
    }

    typealias Action = Machine.Action

    /// A FIN: a half-close after a complete request is served; before, or where nothing is owed, it ends the
    /// connection; a relay and a flushing close carry on.
    @Test(arguments: [
        (Phase.idle, Action.abort(reset: false)), (.partialHead, .abort(reset: false)), (.bodyDue, .abort(reset: false)),
        (.responseOwed, .none), (.responseFlowing, .none), (.bodyDueAfterResponse, .abort(reset: false)),
        (.dialling, .abort(reset: false)), (.awaitingTunnelBytes, .abort(reset: false)), (.relaying, .none),
        (.flushing, .none), (.lingering, .abort(reset: false)),
    ])
    func theClientsEOF(_ phase: Phase, _ expected: Action) {
        var (m, progress) = Self.machine(in: phase)
        #expect(m.clientEOF(progress) == expected, "\(phase)")
        if phase == .responseOwed || phase == .responseFlowing {
            #expect(m.flow?.clientHalfClosed == true)
            #expect(m.exchangeEnded(keepAlive: true) == .closeAfterFlush)  // served, then closed
        }
    }

    /// A socket or TLS error: nothing more can be delivered, except by a relay, which sees it itself.
    @Test(arguments: Phase.allCases)
    func theClientsError(_ phase: Phase) {
        var (m, _) = Self.machine(in: phase)
        #expect(m.clientError() == (phase == .relaying ? .none : .abort(reset: false)), "\(phase)")
    }

    /// client_timeout: 408 while a request is due and nothing was answered, a reset once the response began
    /// (the body can no longer come), nothing while a response is owed or the connection closes by itself.
    @Test(arguments: [
        (Phase.idle, Action.abort(reset: false)), (.partialHead, .answerRequestTimeout(.head)),
        (.bodyDue, .answerRequestTimeout(.body)), (.responseOwed, .resumeReading), (.responseFlowing, .resumeReading),
        (.bodyDueAfterResponse, .abort(reset: true)), (.dialling, .resumeReading), (.awaitingTunnelBytes, .abort(reset: false)),
        (.relaying, .none), (.flushing, .none), (.lingering, .abort(reset: false)),
    ])
    func theClientsTimeout(_ phase: Phase, _ expected: Action) {
        var (m, progress) = Self.machine(in: phase)
        #expect(m.clientTimedOut(progress) == expected, "\(phase)")
    }

    /// The access record's reason for a client that went away: named for the phase, and for a timeout.
    @Test func theRecordSaysWhyTheClientWent() {
        #expect(Self.machine(in: .dialling).0.state.clientLoss(timedOut: false).contains("before the tunnel was open"))
        #expect(Self.machine(in: .awaitingTunnelBytes).0.state.clientLoss(timedOut: true).contains("sent nothing in the tunnel"))
        #expect(Self.machine(in: .bodyDueAfterResponse).0.state.clientLoss(timedOut: true).contains("stalled"))
        #expect(Self.machine(in: .responseFlowing).0.state.clientLoss(timedOut: false).contains("before the response completed"))
    }
}

@Suite struct UpstreamClosingInEachPhaseTests {
    /// How far the response has got when the upstream goes.
    enum Phase: String, CaseIterable {
        case noHead, afterInterim, lengthBody, chunkedBody, closeDelimitedBody, switched, done
    }

    /// What the upstream sent before it went, to a GET (an upgrade request for `.switched`).
    static func sent(_ phase: Phase) -> String {
        switch phase {
        case .noHead: return ""
        case .afterInterim: return "HTTP/1.1 100 Continue\r\n\r\n"
        case .lengthBody: return "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"
        case .chunkedBody: return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n"
        case .closeDelimitedBody: return "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhalf"
        case .switched: return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        case .done: return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        }
    }

    enum Verdict: Equatable { case failedBeforeResponse, complete, truncate, closeUpstream }

    static func ended(in phase: Phase, by event: UpstreamEvent) throws -> (Verdict, ExchangeProgress) {
        let upstreamInput = evbuffer_new()!, clientOutput = evbuffer_new()!
        defer { evbuffer_free(upstreamInput); evbuffer_free(clientOutput) }
        let upgrade = phase == .switched
        let head = try HeadParser.parseRequest(Array((upgrade ? "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                                                              : "GET /x HTTP/1.1\r\nHost: a\r\n\r\n").utf8))
        var e = Exchange()
        e.request = head
        e.requestBody = Exchange.RequestBody(Result { try BodyFraming.forRequest(head) })
        e.upgrade = upgrade ? "websocket" : nil
        e.startMicros = 1
        let bytes = Array(sent(phase).utf8)
        bytes.withUnsafeBytes { _ = evbuffer_add(upstreamInput, $0.baseAddress, $0.count) }
        for _ in 0..<4 {
            switch e.stepResponse(from: upstreamInput, to: clientOutput, limits: HeadLimits(maxHeadBytes: 1024), highWatermark: 1 << 20) {
            case .forwardInterim, .sendFinalHead: continue
            default: break
            }
            break
        }
        let verdict: Verdict
        switch e.upstreamEnded(event, output: clientOutput) {
        case .failedBeforeResponse: verdict = .failedBeforeResponse
        case .complete: verdict = .complete
        case .truncate: verdict = .truncate
        case .closeUpstream: verdict = .closeUpstream
        }
        return (verdict, e.progress)
    }

    /// Before a final head the failure is answered (the client has had at most an interim response); in a body
    /// it is a truncation, except a close-delimited body ended by close_notify; past the response it is nothing.
    @Test(arguments: Phase.allCases)
    func theUpstreamGoing(_ phase: Phase) throws {
        let events: [UpstreamEvent] = [.eof(closeNotify: false), .eof(closeNotify: true), .error(errno: 104, tls: [], dnsError: 0), .readTimeout]
        for event in events {
            let (verdict, progress) = try Self.ended(in: phase, by: event)
            let expected: Verdict
            switch phase {
            case .noHead, .afterInterim: expected = .failedBeforeResponse
            case .lengthBody, .chunkedBody: expected = .truncate
            case .closeDelimitedBody:
                if case .eof(true) = event { expected = .complete } else { expected = .truncate }
            case .switched, .done: expected = .closeUpstream
            }
            #expect(verdict == expected, "\(phase), \(event)")
            // What the connection then does: answer before a response began, reset after.
            var m = Machine(clock: FakeClock(), headerTimeoutMillis: 5_000, clientTimeoutMillis: 60_000)
            m.headParsed(keepAlive: true)
            if verdict == .failedBeforeResponse {
                #expect(m.exchangeFailed(progress) == .answer, "\(phase), \(event)")
            } else if verdict == .truncate {
                #expect(m.exchangeFailed(progress) == .abort(reset: true), "\(phase), \(event)")
            }
        }
    }
}
