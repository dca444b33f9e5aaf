import Testing
@testable import ProxyConfig

/// `protocol = "http/1.1" | "h2" | "auto"` in `[upstream]` and routes: the default, inheritance, what the router
/// decides with, the ALPN offered, and the error for anything else.
@Suite struct UpstreamProtocolConfigTests {
    let route = "[[route]]\nhost = \"api.example.com\"\naction = \"tls\"\n"

    @Test func http11ByDefault() throws {
        let c = try load(route)
        #expect(c.upstream.httpProtocol == .http11)
        #expect(c.routes[0].httpProtocol == .http11)
        #expect(c.router.match(host: "api.example.com", port: 443, path: "/").httpProtocol == .http11)
    }

    @Test func routesInheritUpstreamsAndMaySayOtherwise() throws {
        let c = try load("""
            [upstream]
            protocol = "h2"
            \(route)
            [[route]]
            host = "b.example.com"
            action = "tls"
            protocol = "http/1.1"
            [[route]]
            host = "c.example.com"
            action = "tls"
            protocol = "auto"
            """)
        #expect(c.routes.map(\.httpProtocol) == [.h2, .http11, .auto])
        #expect(c.router.match(host: "api.example.com", port: 443, path: "/").httpProtocol == .h2)
        #expect(c.router.match(host: "b.example.com", port: 443, path: "/").httpProtocol == .http11)
        // The unmatched policy speaks what [upstream] says.
        #expect(c.router.match(host: "zz.example", port: 443, path: "/").httpProtocol == .h2)
    }

    @Test func alpnOffers() {
        #expect(UpstreamProtocol.http11.alpn == ["http/1.1"])
        #expect(UpstreamProtocol.h2.alpn == ["h2"])
        #expect(UpstreamProtocol.auto.alpn == ["h2", "http/1.1"])
    }

    @Test(arguments: ["h2c", "HTTP/2", "http/2", "", "h3"])
    func otherValuesAreRefusedNamingFileAndKey(text: String) {
        let e = configError("[upstream]\nprotocol = \"\(text)\"\n" + route)
        #expect(e?.file == "proxy.conf")
        #expect(e?.key == "upstream.protocol")
        #expect(e?.message.contains("expected \"http/1.1\"") == true, "\(String(describing: e?.message))")
        let r = configError(route + "protocol = \"\(text)\"\n")
        #expect(r?.key == "route[1].protocol")
    }

    @Test func aNonStringIsRefused() {
        let e = configError("[upstream]\nprotocol = 2\n" + route)
        #expect(e?.key == "upstream.protocol")
    }

    @Test func h2ConnectionsPerKeyInheritsAndIsBounded() throws {
        let c = try load("[upstream]\nh2_connections = 2\n" + route + "[[route]]\nhost = \"b.example\"\naction = \"tls\"\nh2_connections = 8\n")
        #expect(c.upstream.h2Connections == 2)
        #expect(c.routes.map(\.h2Connections) == [2, 8])
        #expect(c.router.match(host: "b.example", port: 443, path: "/").h2Connections == 8)
        #expect(try load(route).routes[0].h2Connections == 4)
        for bad in ["0", "65", "-1"] {
            let e = configError("[upstream]\nh2_connections = \(bad)\n" + route)
            #expect(e?.key == "upstream.h2_connections")
            #expect(e?.message.contains("expected 1 to 64") == true)
        }
        #expect(configError(route + "h2_connections = \"4\"\n")?.key == "route[1].h2_connections")
    }

    @Test func h2PingSettingsHaveDefaultsInheritAndMayBeOff() throws {
        let plain = try load(route)
        #expect(plain.routes[0].timeouts.h2PingInterval == .seconds(30))
        #expect(plain.routes[0].timeouts.h2PingTimeout == .seconds(5))
        let c = try load("[upstream]\nh2_ping_interval = \"10s\"\nh2_ping_timeout = \"2s\"\n" + route
                         + "[[route]]\nhost = \"b.example\"\naction = \"tls\"\nh2_ping_interval = \"off\"\n"
                         + "[[route]]\nhost = \"c.example\"\naction = \"tls\"\nh2_ping_interval = \"250ms\"\nh2_ping_timeout = \"300ms\"\n")
        #expect(c.upstream.timeouts.h2PingInterval == .seconds(10))
        #expect(c.routes.map(\.timeouts.h2PingInterval) == [.seconds(10), nil, TimeSpan(milliseconds: 250)])
        #expect(c.routes.map(\.timeouts.h2PingTimeout) == [.seconds(2), .seconds(2), TimeSpan(milliseconds: 300)])
        #expect(c.router.match(host: "c.example", port: 443, path: "/").timeouts.h2PingInterval == TimeSpan(milliseconds: 250))
    }

    @Test(arguments: ["\"0s\"", "\"50ms\"", "\"never\"", "30", "\"\"", "\"30\""])
    func aBadPingIntervalIsRefusedNamingFileAndKey(value: String) {
        let e = configError("[upstream]\nh2_ping_interval = \(value)\n" + route)
        #expect(e?.file == "proxy.conf")
        #expect(e?.key == "upstream.h2_ping_interval")
        let r = configError(route + "h2_ping_interval = \(value)\n")
        #expect(r?.key == "route[1].h2_ping_interval")
        // A number as much as a wrong string: the message says what to write instead.
        #expect(r?.message.contains("expected \"off\" or a duration of at least 100ms") == true, "\(String(describing: r?.message))")
    }

    @Test(arguments: ["\"0s\"", "\"off\"", "5", "\"5\""])
    func aBadPingTimeoutIsRefusedNamingTheKey(value: String) {
        let r = configError(route + "h2_ping_timeout = \(value)\n")
        #expect(r?.key == "route[1].h2_ping_timeout")
        #expect(r?.message.contains("duration") == true, "\(String(describing: r?.message))")
    }

    /// A duration whose parts add up beyond what an Int holds is refused with the key's error, not a crash of the
    /// loader (arithmetic overflow in `TimeSpan.parse`); the largest one part may say still loads.
    @Test(arguments: ["h2_ping_interval", "h2_ping_timeout", "idle_timeout"])
    func aDurationTooLargeToCountIsRefusedNotACrash(key: String) {
        let huge = String(repeating: "999999999h", count: 3000)
        let r = configError(route + "\(key) = \"\(huge)\"\n")
        #expect(r?.key == "route[1].\(key)")
        #expect(TimeSpan.parse(huge) == nil)
        #expect(TimeSpan.parse("999999999h")?.milliseconds == 999_999_999 * 3_600_000)
        #expect(TimeSpan.parse("999999999h1ms") == nil)
        #expect(TimeSpan.parse("1h1m1s1ms")?.milliseconds == 3_661_001)
    }
}
