import Testing
@testable import ProxyConfig

/// The route index answers what the scan in file order answers: the property test draws random tables (exact,
/// wildcard and catch-all hosts over a small alphabet of labels, ports, path prefixes by segment and by string)
/// and random requests from the same alphabet, so that near misses are common, and compares every decision.
@Suite struct RouteIndexTests {
    /// xorshift64*: the same cases on every run.
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state ^= state >> 12
            state ^= state << 25
            state ^= state >> 27
            return state &* 0x2545_F491_4F6C_DD1D
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
        mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
        mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    }

    static let labels = ["a", "b", "ab", "api", "x-1", "com", "test", "_s"]
    static let segments = ["", "a", "ab", "abc", "b", "v1", "v10", "eu", "europe", "%2F", ";x", "a.b"]
    static let ports = [443, 8443, 80]
    let trust = TrustSettings(caFile: nil, minTLS: .tls12)
    let timeouts = Timeouts(connect: .seconds(5), response: .seconds(60), idle: .seconds(90))

    func host(_ r: inout Random) -> String {
        (0..<(1 + r.below(4))).map { _ in r.pick(Self.labels) }.joined(separator: ".")
    }

    func path(_ r: inout Random) -> String {
        "/" + (0..<(1 + r.below(4))).map { _ in r.pick(Self.segments) }.joined(separator: "/")
    }

    func table(_ r: inout Random, size: Int) -> [Route] {
        (0..<size).map { i in
            let pattern: HostPattern
            switch r.below(10) {
            case 0: pattern = .any
            case 1, 2, 3: pattern = .subdomains(of: host(&r))
            default: pattern = .exact(host(&r))
            }
            var prefix: String?
            if r.chance(60) {
                prefix = path(&r)
                if r.chance(20) { prefix = "/" }
                // A prefix that stops inside a segment, for string matching.
                if r.chance(20), let p = prefix, p.count > 2 { prefix = String(p.dropLast(1)) }
                // Not a canonical prefix (the loader refuses it): it never matches.
                if r.chance(2) { prefix = "ab" }
            }
            let action: RouteAction = r.pick([.deny, .tls, .mtls(identity: "us"), .mtls(identity: "eu")])
            return Route(index: i + 1, host: pattern, port: r.chance(30) ? r.pick(Self.ports) : nil, pathPrefix: prefix,
                         pathPrefixMatch: r.chance(30) ? .string : .segment, action: action,
                         connect: r.chance(10) ? HostPort(host: "127.0.0.1", port: 9000) : nil, trust: trust, timeouts: timeouts)
        }
    }

    @Test func theIndexDecidesAsTheScanInFileOrder() {
        var r = Random(state: 0x9E37_79B9_7F4A_7C15)
        var requests = 0, matched = 0
        for _ in 0..<300 {
            let router = Router(routes: table(&r, size: 1 + r.below(40)), unmatched: .deny, upstream: UpstreamSettings())
            for _ in 0..<40 {
                // Hosts mostly taken from the table (and their subdomains), so that routes match often.
                var h = host(&r)
                if r.chance(70), let route = router.routes.randomElement(using: &r) {
                    switch route.host {
                    case .exact(let name): h = name
                    case .subdomains(let base): h = r.chance(80) ? host(&r) + "." + base : base
                    case .any: break
                    }
                }
                var p = path(&r)
                if r.chance(50), let prefix = router.routes.randomElement(using: &r)?.pathPrefix {
                    p = prefix + (r.chance(50) ? "" : r.pick(["/", "x", "/a", "a/b", "/v1/"]))
                }
                if r.chance(3) { p = r.pick(["", "*", "a/b"]) }
                let port = r.pick(Self.ports)
                let expected = router.scanFirstMatch(host: h, port: port, path: p[...])
                let got = router.match(host: h, port: port, path: p[...]).route.map { $0.index - 1 }
                #expect(got == expected, "host \(h) port \(port) path \(p) in \(router.routes.map(\.description))")
                #expect(router.matchTunnel(host: h, port: port).route.map { $0.index - 1 }
                        == router.scanFirstMatch(host: h, port: port, path: nil))
                #expect(router.planTunnel(host: h, port: port) == router.scanPlanTunnel(host: h, port: port),
                        "CONNECT \(h):\(port) in \(router.routes.map(\.description))")
                requests += 1
                if expected != nil { matched += 1 }
            }
        }
        // The draw is worth something only if both outcomes are common.
        #expect(requests == 12_000)
        #expect(matched > requests / 4 && matched < requests * 3 / 4, "\(matched) of \(requests) matched")
    }

    @Test func explainListsTheRoutesAheadOfTheIndexAnswer() {
        let routes = [
            Route(index: 1, host: .exact("api.test"), pathPrefix: "/payments/eu", action: .mtls(identity: "eu"), trust: trust, timeouts: timeouts),
            Route(index: 2, host: .subdomains(of: "test"), port: 8443, action: .tls, trust: trust, timeouts: timeouts),
            Route(index: 3, host: .exact("api.test"), action: .mtls(identity: "us"), trust: trust, timeouts: timeouts),
            Route(index: 4, host: .any, action: .deny, trust: trust, timeouts: timeouts),
        ]
        let router = Router(routes: routes, unmatched: .deny, upstream: UpstreamSettings())
        let e = router.explain(host: "api.test", port: 443, path: "/payments/europe")
        #expect(e.match.route?.index == 3)
        #expect(e.skipped.map(\.route.index) == [1, 2])
    }

    @Test func aLargeTableDecidesTheLastRoute() {
        let routes = (0..<20_000).map { i in
            Route(index: i + 1, host: i % 10 == 9 ? .subdomains(of: "zone\(i).example.test") : .exact("svc\(i).example.test"),
                  pathPrefix: i % 10 == 9 ? nil : "/api/v\(i % 3)", action: i % 10 == 9 ? .deny : .mtls(identity: "us"),
                  trust: trust, timeouts: timeouts)
        }
        let router = Router(routes: routes, unmatched: .deny, upstream: UpstreamSettings())
        #expect(router.match(host: "svc19998.example.test", port: 443, path: "/api/v0/x").route?.index == 19_999)
        #expect(router.match(host: "svc19998.example.test", port: 443, path: "/api/v00/x").route == nil)
        #expect(router.match(host: "a.zone19999.example.test", port: 443, path: "/").route?.index == 20_000)
        #expect(router.match(host: "zone19999.example.test", port: 443, path: "/").route == nil)
    }
}

extension Array {
    func randomElement(using r: inout RouteIndexTests.Random) -> Element? {
        isEmpty ? nil : self[r.below(count)]
    }
}

extension Route: CustomStringConvertible {
    public var description: String {
        "#\(index) \(host)\(port.map { ":\($0)" } ?? "")\(pathPrefix.map { " \($0) (\(pathPrefixMatch.rawValue))" } ?? "") \(action)"
    }
}
