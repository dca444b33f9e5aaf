import HTTP1
import Testing
@testable import ProxyServer

/// A tunnel's resources (the dialler, the opened tunnel, the relay) as the payloads of the connection machine's
/// states, without sockets: whatever happens to the connection, each resource the machine was given is handed
/// back to the shell exactly once (to be released there), never dropped and never handed back twice.
@Suite struct TunnelResourcesTests {
    enum Phase: String, CaseIterable { case dialling, awaitingTunnelBytes, relaying }

    /// Everything that can reach a connection holding a tunnel resource, in the order the shell would carry it.
    enum Event: String, CaseIterable {
        case clientEOF, clientError, clientTimedOut, timerFired, drain
        case tunnelDialled, tunnelBytesArrived, relayEnded, aborted
    }

    static func machine(in phase: Phase) -> (Machine, FakeResource) {
        var m = Machine(clock: FakeClock(), headerTimeoutMillis: 5_000, clientTimeoutMillis: 60_000, lingerMillis: 2_000)
        m.headParsed(keepAlive: true)
        let resource = FakeResource(phase.rawValue)
        switch phase {
        case .dialling:
            m.tunnelDialling(resource)
        case .awaitingTunnelBytes:
            m.tunnelOpened(resource)
        case .relaying:
            m.tunnelDialling(FakeResource("dialer"))
            _ = m.tunnelDialled()
            m.relayStarted(resource)
        }
        return (m, resource)
    }

    /// Carries `event` out as `ClientConnection` does: an `.abort` is the shell's teardown, which calls
    /// `aborted()`. Returns what the machine handed back.
    static func deliver(_ event: Event, to m: inout Machine) -> [FakeResource] {
        let owed = ExchangeProgress(requestComplete: true, responseStarted: false)
        var action: Machine.Action = .none
        var handed: [FakeResource] = []
        switch event {
        case .clientEOF: action = m.clientEOF(owed)
        case .clientError: action = m.clientError()
        case .clientTimedOut: action = m.clientTimedOut(owed)
        case .timerFired:
            m.clock.nowMillis += 120_000
            action = m.timerFired()
        case .drain: action = m.drain()
        case .tunnelDialled: if let d = m.tunnelDialled() { handed.append(d) }
        case .tunnelBytesArrived: if let o = m.tunnelBytesArrived() { handed.append(o) }
        case .relayEnded: if let r = m.relayEnded() { handed.append(r) }
        case .aborted: handed += teardown(&m)
        }
        if case .abort = action { handed += teardown(&m) }
        return handed
    }

    static func teardown(_ m: inout Machine) -> [FakeResource] {
        switch m.aborted() {
        case .nothing: return []
        case .dialer(let r), .opened(let r), .relay(let r): return [r]
        }
    }

    /// Any two events, then the connection's end (the shell always ends in its teardown): the resource comes back
    /// once, and it is the one given.
    @Test(arguments: Phase.allCases)
    func eachResourceIsHandedBackExactlyOnce(_ phase: Phase) {
        for first in Event.allCases {
            for second in Event.allCases {
                var (m, resource) = Self.machine(in: phase)
                var handed = Self.deliver(first, to: &m)
                handed += Self.deliver(second, to: &m)
                handed += Self.teardown(&m)
                #expect(handed.count == 1 && handed.first === resource, "\(phase): \(first), then \(second): handed back \(handed)")
                #expect(m.state == .closed)
                #expect(Self.teardown(&m).isEmpty)  // closed: nothing more, ever
            }
        }
    }

    /// An event that ends the connection where a resource is held leaves the state (and the resource in it) for
    /// the teardown: the machine does not reach `.closed` with a resource the shell has not taken.
    @Test(arguments: Phase.allCases)
    func anAbortLeavesTheResourceForTheTeardown(_ phase: Phase) {
        for event in [Event.clientEOF, .clientError, .clientTimedOut] {
            var (m, resource) = Self.machine(in: phase)
            let owed = ExchangeProgress(requestComplete: true, responseStarted: false)
            let action: Machine.Action
            switch event {
            case .clientEOF: action = m.clientEOF(owed)
            case .clientError: action = m.clientError()
            default: action = m.clientTimedOut(owed)
            }
            guard case .abort = action else {
                // Not an end here (the relay hears its client itself; client_timeout does not apply while dialling).
                #expect(m.state != .closed, "\(phase): \(event)")
                continue
            }
            #expect(m.state != .closed, "\(phase): \(event) closed the machine before the teardown")
            #expect(Self.teardown(&m).first === resource, "\(phase): \(event)")
        }
    }

    /// The dialler's report and the opened tunnel's first bytes hand the resource back and leave the CONNECT's
    /// exchange to be answered or relayed; the relay's end closes the connection.
    @Test func handingBackMovesTheConnectionOn() {
        var (dialling, _) = Self.machine(in: .dialling)
        _ = dialling.tunnelDialled()
        #expect(dialling.isExchanging)
        #expect(dialling.flow?.keepAlive == false)  // the CONNECT's answer, if any, ends the connection
        var (opened, _) = Self.machine(in: .awaitingTunnelBytes)
        _ = opened.tunnelBytesArrived()
        #expect(opened.isExchanging)
        #expect(opened.exchangeEnded(keepAlive: true) == .closeAfterFlush)
        var (relaying, _) = Self.machine(in: .relaying)
        _ = relaying.relayEnded()
        #expect(relaying.state == .closed)
    }

    /// What the connection serves changes only when a tunnel's first bytes choose it.
    @Test func theServedKindChangesOnlyInsideATunnel() {
        var m = Machine(clock: FakeClock(), serving: .forward, headerTimeoutMillis: 5_000, clientTimeoutMillis: 60_000)
        guard case .forward = m.serving else { Issue.record("serving \(m.serving)"); return }
        m.headParsed(keepAlive: true)
        m.tunnelOpened(FakeResource("opened"))
        _ = m.tunnelBytesArrived()
        m.servingInsideTunnel(as: .intercepted(host: "a.example", port: 443))
        guard case .intercepted("a.example", 443) = m.serving else { Issue.record("serving \(m.serving)"); return }
        #expect(m.isAwaitingHead)
    }
}
