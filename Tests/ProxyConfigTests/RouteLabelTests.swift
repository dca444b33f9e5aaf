import Testing
@testable import ProxyConfig

/// A route's label is made once, when the route is, and follows later changes to what it is made of.
private let trust = TrustSettings(caFile: nil, minTLS: .tls12)
private let timeouts = Timeouts(connect: .seconds(5), response: .seconds(60), idle: .seconds(90))

@Suite struct RouteLabelTests {
    @Test func labelIsTheNameOrThePositionAndHost() {
        var route = Route(index: 3, host: .exact("api.test"), action: .tls, trust: trust, timeouts: timeouts)
        #expect(route.label == "route[3] api.test")
        route.index = 4
        #expect(route.label == "route[4] api.test")
        route.host = HostPattern.parse("*.example.com")!
        #expect(route.label == "route[4] *.example.com")
        route.name = "billing"
        #expect(route.label == "billing")
        route.name = nil
        #expect(route.label == "route[4] *.example.com")
        let named = Route(index: 1, name: "eu", host: .exact("a.test"), action: .deny, trust: trust, timeouts: timeouts)
        #expect(named.label == "eu")
        #expect(Router(routes: [named], unmatched: .deny, upstream: UpstreamSettings()).match(host: "a.test", port: 443, path: "/").label == "eu")
    }
}

@Suite struct HostPatternMatchTests {
    @Test func subdomainPatternsMatchByBytes() {
        let pattern = HostPattern.subdomains(of: "example.com")
        for (host, expected) in [("a.example.com", true), ("a.b.example.com", true), ("example.com", false), (".example.com", false),
                                 ("aexample.com", false), ("a.example.co", false), ("a.example.comx", false), ("a-example.com", false),
                                 ("", false), ("é.example.com", true)] {
            #expect(pattern.matches(host) == expected, "\(host)")
        }
        #expect(HostPattern.exact("a.test").matches("a.test") && !HostPattern.exact("a.test").matches("b.a.test"))
        #expect(HostPattern.any.matches("anything"))
    }
}
