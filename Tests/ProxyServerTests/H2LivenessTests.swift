import Testing
@testable import ProxyServer

/// When an idle HTTP/2 connection is sent a PING, retired for not answering, or closed for idleness, driven with
/// a fake clock (milliseconds), no sockets.
@Suite struct H2LivenessTests {
    func machine(interval: Int? = 1000, timeout: Int = 500, idle: Int = 10_000, now: Int = 0) -> H2Liveness {
        H2Liveness(pingInterval: interval, pingTimeout: timeout, idleTimeout: idle, now: now)
    }

    @Test func anIdleConnectionSilentForTheIntervalIsPinged() {
        var m = machine()
        #expect(m.deadline == 1000)
        #expect(m.timerFired(now: 999) == .nothing)
        #expect(m.timerFired(now: 1000) == .sendPing)
        #expect(m.awaitingAnswer)
        #expect(m.deadline == 1500)
    }

    @Test func anAnswerKeepsTheConnectionAndTheNextPingComesAnIntervalLater() {
        var m = machine()
        _ = m.timerFired(now: 1000)
        m.heard(now: 1020)
        #expect(!m.awaitingAnswer)
        #expect(m.deadline == 2020)
        #expect(m.timerFired(now: 1500) == .nothing)
        #expect(m.timerFired(now: 2020) == .sendPing)
    }

    @Test func noAnswerWithinTheTimeoutRetires() {
        var m = machine()
        _ = m.timerFired(now: 1000)
        #expect(m.timerFired(now: 1499) == .nothing)
        #expect(m.timerFired(now: 1500) == .retire)
    }

    @Test func answeredPingsDoNotExtendTheIdleTimeout() {
        var m = machine(interval: 300, timeout: 1000, idle: 1200)
        var now = 0
        var closed = false
        while now <= 2000 && !closed {
            if let d = m.deadline { now = d }
            switch m.timerFired(now: now) {
            case .sendPing: m.heard(now: now + 5)
            case .closeIdle: closed = true
            case .retire: Issue.record("an answered PING retired the connection")
            case .nothing: break
            }
        }
        #expect(closed)
        #expect(now == 1200)
    }

    @Test func aStreamOnAFreshlyHeardConnectionOpensAtOnce() {
        var m = machine()
        m.heard(now: 400)
        m.busy()
        #expect(m.admit(now: 900) == .open)
        #expect(m.deadline == nil)  // busy: no idle timer, no PING
    }

    @Test func aStreamWhileAPingIsUnansweredWaitsThenOpensOnTheAnswer() {
        var m = machine()
        _ = m.timerFired(now: 1000)
        m.busy()
        #expect(m.admit(now: 1100) == .wait)
        #expect(m.deadline == 1500)  // the PING's timeout still runs while the stream waits
        m.heard(now: 1200)
        #expect(m.admit(now: 1200) == .open)
    }

    @Test func aStreamWaitingOnAnUnansweredPingSeesTheConnectionRetired() {
        var m = machine()
        _ = m.timerFired(now: 1000)
        m.busy()
        #expect(m.admit(now: 1100) == .wait)
        #expect(m.timerFired(now: 1500) == .retire)
    }

    @Test func aStreamOnAConnectionSilentTooLongSendsAPingFirst() {
        // The timer was late (a busy loop): the stream asks before the PING went out.
        var m = machine()
        m.busy()
        #expect(m.admit(now: 1300) == .ping)
        #expect(m.awaitingAnswer)
        #expect(m.admit(now: 1301) == .wait)
        #expect(m.timerFired(now: 1800) == .retire)
    }

    @Test func pingsOffOnlyCloseForIdleness() {
        var m = machine(interval: nil, idle: 3000)
        #expect(m.deadline == 3000)
        #expect(m.timerFired(now: 2000) == .nothing)
        #expect(m.admit(now: 100_000) == .open)
        #expect(m.timerFired(now: 3000) == .closeIdle)
    }

    @Test func theIdleTimeoutCountsFromTheLastStreamsEnd() {
        var m = machine(interval: nil, idle: 3000)
        m.busy()
        #expect(m.deadline == nil)
        m.idle(now: 5000)
        m.idle(now: 6000)  // already idle: the first moment counts
        #expect(m.deadline == 8000)
        #expect(m.timerFired(now: 7999) == .nothing)
        #expect(m.timerFired(now: 8000) == .closeIdle)
    }
}
