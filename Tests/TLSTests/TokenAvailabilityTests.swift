import Testing
@testable import TLS

/// A token key's availability: back-off after failures, restart and reload once it is over, recovery.
@Suite struct TokenAvailabilityTests {
    @Test func aHeldKeySigns() {
        #expect(TokenAvailability().next(at: 0, holdingKey: true) == .sign)
    }

    @Test func aKeyTakenByAnEngineRestartIsLoadedAgainAtOnce() {
        #expect(TokenAvailability().next(at: 5, holdingKey: false) == .reload(restartFirst: false, failedAtMillis: 0))
    }

    @Test func afterAFailureItWaitsThenRestartsAndReloads() {
        var a = TokenAvailability()
        a.failed("Object handle invalid", at: 10_000)
        #expect(!a.isAvailable)
        #expect(a.next(at: 10_500, holdingKey: false) == .wait(reason: "Object handle invalid", retryAtMillis: 11_000))
        #expect(a.next(at: 11_000, holdingKey: false) == .reload(restartFirst: true, failedAtMillis: 10_000))
        a.succeeded()
        #expect(a.isAvailable)
        #expect(a.failures == 0)
    }

    @Test func theBackOffDoublesUpToThirtySecondsAndRemembersSince() {
        var a = TokenAvailability()
        var now = 0
        var waits: [Int] = []
        for _ in 0..<8 {
            a.failed("token absent", at: now)
            guard case .unavailable(let since, _, let last, let retry) = a.state else { Issue.record("available"); return }
            #expect(since == 0)
            #expect(last == now)
            waits.append(retry - now)
            now = retry
        }
        #expect(waits == [1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000])
        a.succeeded()
        a.failed("again", at: now)
        guard case .unavailable(let since, _, _, let retry) = a.state else { Issue.record("available"); return }
        #expect(since == now)
        #expect(retry - now == 1000)
    }
}
