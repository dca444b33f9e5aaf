import Testing
@testable import HTTP1

private let sidecar = LocationRewrite(.sidecar(upstreamHost: "api.mygreatbank.test", upstreamPort: 443,
                                               listenerAuthority: "127.0.0.1:9001"))

/// The forward rule, with "api.mygreatbank.test" (any port 443 path) and "files.test:8443" under /v1 as mTLS routes.
private let forward = LocationRewrite(.httpsToHTTP(isProxied: { host, port, path in
    (host == "api.mygreatbank.test" && port == 443) || (host == "files.test" && port == 8443 && path.hasPrefix("/v1"))
}))

@Suite struct LocationRewriteTests {
    @Test(arguments: [
        ("https://api.mygreatbank.test/v1/new", "http://127.0.0.1:9001/v1/new"),
        ("https://API.MyGreatBank.test/v1/new?x=1#f", "http://127.0.0.1:9001/v1/new?x=1#f"),
        ("https://api.mygreatbank.test:443/v1/new", "http://127.0.0.1:9001/v1/new"),
        ("https://api.mygreatbank.test.:443/", "http://127.0.0.1:9001/"),
        ("https://api.mygreatbank.test", "http://127.0.0.1:9001"),
        ("https://api.mygreatbank.test:/x", "http://127.0.0.1:9001/x"),
        ("HTTPS://api.mygreatbank.test?q", "http://127.0.0.1:9001?q"),
        ("//api.mygreatbank.test/v1/new", "//127.0.0.1:9001/v1/new"),
    ])
    func sidecarRewritesURLsOnItsUpstream(_ value: String, _ expected: String) {
        #expect(sidecar.rewrite(value) == expected)
    }

    @Test(arguments: [
        "/v1/new",                                   // relative: the client resolves it against the listener already
        "v1/new", "?page=2", "#top", "",
        "https://other.example.com/v1/new",          // another host
        "https://api.mygreatbank.test.evil.example/",
        "https://api.mygreatbank.test:8443/v1/new",  // another port
        "http://api.mygreatbank.test/v1/new",        // another scheme (port 80)
        "https://user@api.mygreatbank.test/",        // userinfo: left alone
        "https://api.mygreatbank.test:99999/",
        "https://api.mygreatbank.test:4x3/",
        "https://[::1/",
        "mailto:someone@api.mygreatbank.test",
        "https:/api.mygreatbank.test/",
        "https://api.mygreatbank.test /",
    ])
    func sidecarLeavesEverythingElse(_ value: String) {
        #expect(sidecar.rewrite(value) == nil)
    }

    @Test func sidecarWithAnotherUpstreamPortAndIPv6Listener() {
        let r = LocationRewrite(.sidecar(upstreamHost: "api.test", upstreamPort: 8443, listenerAuthority: "[::1]:9001"))
        #expect(r.rewrite("https://api.test:8443/a") == "http://[::1]:9001/a")
        #expect(r.rewrite("https://api.test/a") == nil)
        let v6 = LocationRewrite(.sidecar(upstreamHost: "::1", upstreamPort: 443, listenerAuthority: "localhost:9001"))
        #expect(v6.rewrite("https://[::1]/a") == "http://localhost:9001/a")
    }

    @Test(arguments: [
        ("https://api.mygreatbank.test/v1/new", "http://api.mygreatbank.test/v1/new"),
        ("https://API.mygreatbank.test:443/v1/new?x", "http://API.mygreatbank.test:443/v1/new?x"),
        ("https://files.test:8443/v1/a", "http://files.test:8443/v1/a"),
    ])
    func forwardTurnsHTTPSIntoHTTPForMTLSHosts(_ value: String, _ expected: String) {
        #expect(forward.rewrite(value) == expected)
    }

    @Test(arguments: [
        "https://other.example.com/",          // no mtls route
        "https://files.test:8443/v2/a",        // the route's path prefix does not match
        "https://files.test/v1/a",             // the route's port does not match
        "http://api.mygreatbank.test/v1/new",  // already http
        "//api.mygreatbank.test/v1/new",       // scheme-relative: the client's scheme is http already
        "/v1/new",
    ])
    func forwardLeavesEverythingElse(_ value: String) {
        #expect(forward.rewrite(value) == nil)
    }

    @Test(arguments: [
        ("127.0.0.1:9001", "127.0.0.1:9001"), ("localhost:9001", "localhost:9001"), ("[::1]:9001", "[::1]:9001"),
        ("sidecar.svc.cluster.local", "sidecar.svc.cluster.local"), ("[::1]", "[::1]"),
    ])
    func authorityFromAPlainHost(_ host: String, _ expected: String) {
        #expect(LocationRewrite.authority(fromHost: host) == expected)
    }

    @Test(arguments: [nil, "", "a b", "a/b", "x@y", "host:", "host:0", "host:65536", "host:1x", "[::1", "[::1]x", "[zz]:1",
                      "a\"b", "a\r\nSet-Cookie: x"] as [String?])
    func authorityRefusesAnythingElse(_ host: String?) {
        #expect(LocationRewrite.authority(fromHost: host) == nil)
    }

    @Test func listenerAuthorityPrefersTheHostTheClientUsedForThatPort() {
        func a(_ host: String?, every: Bool = false) -> String {
            LocationRewrite.listenerAuthority(host: host, listenAuthority: every ? "0.0.0.0:9001" : "127.0.0.1:9001",
                                              listenPort: 9001, listensOnEveryAddress: every)
        }
        #expect(a("localhost:9001") == "localhost:9001")
        #expect(a("sidecar.ns.svc:9001") == "sidecar.ns.svc:9001")
        #expect(a("[::1]:9001") == "[::1]:9001")
        #expect(a(nil) == "127.0.0.1:9001")                      // HTTP/1.0 without Host
        #expect(a("api.mygreatbank.test") == "127.0.0.1:9001")   // Host set to the upstream's name: port 80, not ours
        #expect(a("localhost:9002") == "127.0.0.1:9001")
        #expect(a("[::1]") == "127.0.0.1:9001")
        #expect(a("bad host") == "127.0.0.1:9001")
        #expect(a("sidecar.ns.svc", every: true) == "sidecar.ns.svc")
        #expect(a(nil, every: true) == "0.0.0.0:9001")
    }

    @Test func clientResponseRewritesLocationAndContentLocationOnly() throws {
        let head = try HeadParser.parseResponse(Array(("HTTP/1.1 301 Moved Permanently\r\nLocation: https://api.mygreatbank.test/v1/new\r\n"
            + "Content-Location: https://api.mygreatbank.test/v1/old.json\r\nLink: <https://api.mygreatbank.test/x>\r\n"
            + "X-Other: https://api.mygreatbank.test/v1/new\r\nContent-Length: 0\r\n\r\n").utf8))
        let out = String(decoding: Forwarding.clientResponse(head, framing: .contentLength(0), requestMethod: "GET", keepAlive: true,
                                                             clientVersion: .http11, locationRewrite: sidecar), as: UTF8.self)
        #expect(out.contains("\r\nLocation: http://127.0.0.1:9001/v1/new\r\n"))
        #expect(out.contains("\r\nContent-Location: http://127.0.0.1:9001/v1/old.json\r\n"))
        #expect(out.contains("\r\nLink: <https://api.mygreatbank.test/x>\r\n"))
        #expect(out.contains("\r\nX-Other: https://api.mygreatbank.test/v1/new\r\n"))
        let plain = String(decoding: Forwarding.clientResponse(head, framing: .contentLength(0), requestMethod: "GET", keepAlive: true,
                                                               clientVersion: .http11), as: UTF8.self)
        #expect(plain.contains("\r\nLocation: https://api.mygreatbank.test/v1/new\r\n"))
    }
}
