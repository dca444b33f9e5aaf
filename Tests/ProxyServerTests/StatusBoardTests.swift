import Testing
import ProxyConfig
import StatusPage
@testable import ProxyServer

/// The status page's counters: per-route requests and 5xx answers, the per-minute ring that gives "the last
/// minutes", the last failure per route, and pool sizes across workers.
@Suite struct StatusBoardTests {
    @Test func trafficIsCountedSinceTheOldestSnapshotOfTheRing() {
        let board = StatusBoard()
        let t0 = 1_800_000_000
        board.tick(now: t0)  // the first snapshot: nothing counted yet
        let api = board.tally(route: "api")
        #expect(board.tally(route: "api") === api)  // one tally per route, shared by the workers
        for status in [200, 200, 502, 404] { api.count(status: status) }
        var traffic = board.traffic(now: t0 + 30)
        #expect(traffic.routes["api"] == RouteTraffic(requests: 4, errors: 1))
        #expect(traffic.windowSeconds == 30)
        // A snapshot a minute, 15 kept: after 16 more minutes the oldest kept is the one of minute 2, 14 minutes
        // before the last; what was counted before it is out of the window, what came after is in.
        for minute in 1...16 {
            board.tick(now: t0 + 60 * minute)
            if minute == 2 { api.count(status: 503) }
        }
        traffic = board.traffic(now: t0 + 16 * 60 + 5)
        #expect(traffic.windowSeconds == 14 * 60 + 5)
        #expect(traffic.routes["api"] == RouteTraffic(requests: 1, errors: 1))
    }

    @Test func aSnapshotIsTakenOnceAMinuteNotOnEveryTick() {
        let board = StatusBoard()
        board.tick(now: 100)
        board.tally(route: "r").count(status: 200)
        board.tick(now: 130)  // too soon: no new snapshot, the window still starts at 100
        #expect(board.traffic(now: 140).windowSeconds == 40)
        #expect(board.traffic(now: 140).routes["r"]?.requests == 1)
    }

    @Test func theLastFailureOfEachRouteIsKept() {
        let board = StatusBoard()
        board.tick(now: 0)
        board.recordFailure(route: "down", status: 502, proxyStatus: "mtls-proxy; error=connection_refused", at: 10)
        board.recordFailure(route: "down", status: 504, proxyStatus: "mtls-proxy; error=connection_timeout", at: 20)
        let down = board.traffic(now: 30).routes["down"]
        #expect(down?.lastFailure == UpstreamFailure(at: 20, status: 504, proxyStatus: "mtls-proxy; error=connection_timeout"))
    }

    @Test func poolSizesAddUpAcrossWorkersAndAWorkerReplacesItsOwn() {
        let board = StatusBoard()
        board.publishPool(worker: 0, idle: ["a.test:443": 2, "b.test:443": 1])
        board.publishPool(worker: 1, idle: ["a.test:443": 3])
        #expect(board.poolFigures() == [PoolFigure(upstream: "a.test:443", idle: 5), PoolFigure(upstream: "b.test:443", idle: 1)])
        board.publishPool(worker: 0, idle: [:])
        #expect(board.poolFigures() == [PoolFigure(upstream: "a.test:443", idle: 3)])
    }

    @Test func egressSaysDirectAndTheDialledAddress() {
        let timeouts = Timeouts(connect: .seconds(1), response: .seconds(1), idle: .seconds(1))
        let trust = TrustSettings(caFile: nil, minTLS: .tls12)
        #expect(StatusReport.egress(Route(index: 1, host: .any, action: .tls, trust: trust, timeouts: timeouts)) == "direct")
        #expect(StatusReport.egress(Route(index: 1, host: .any, action: .deny, trust: trust, timeouts: timeouts)) == "none (denied)")
    }
}
