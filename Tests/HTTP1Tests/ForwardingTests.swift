import Testing
@testable import HTTP1

private func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

@Suite struct RequestTargetTests {
    @Test func parsesAbsoluteURLs() throws {
        let t = try AbsoluteTarget.parse("http://API.MyGreatBank.test/v1/accounts?x=1")
        #expect(t.host == "api.mygreatbank.test")
        #expect(t.explicitPort == nil)
        #expect(t.pathAndQuery == "/v1/accounts?x=1")
        #expect(t.path == "/v1/accounts")

        let p = try AbsoluteTarget.parse("http://api.test:8443")
        #expect(p.explicitPort == 8443)
        #expect(p.pathAndQuery == "/")

        let q = try AbsoluteTarget.parse("http://api.test?a=b")
        #expect(q.pathAndQuery == "/?a=b")

        let v6 = try AbsoluteTarget.parse("http://[::1]:9443/x")
        #expect(v6.host == "::1")
        #expect(v6.explicitPort == 9443)
        #expect(v6.hostHeader(port: 9443, defaultPort: 443) == "[::1]:9443")
    }

    @Test func hostHeaderOmitsTheDefaultPort() throws {
        let t = try AbsoluteTarget.parse("http://api.test/")
        #expect(t.hostHeader(port: 443, defaultPort: 443) == "api.test")
        #expect(t.hostHeader(port: 8443, defaultPort: 443) == "api.test:8443")
    }

    @Test(arguments: [
        "/relative",                      // origin-form at a forward proxy
        "ftp://a.test/",                  // scheme
        "http://user:pw@a.test/",         // user info
        "http://a.test/#frag",            // fragment
        "http://a.test:0/",               // port 0
        "http://a.test:65536/",           // port range
        "http://a.test:x/",               // port text
        "http://a test/",                 // space in host
        "http:///path",                   // empty host
        "http://a.test../x/",             // a trailing dot is removed once, not twice
        "http://[zz::1]/",
    ])
    func rejectsBadTargets(_ target: String) {
        #expect(throws: HTTPParseError.self) { try AbsoluteTarget.parse(target) }
    }
}

@Suite struct ForwardingTests {
    @Test func upstreamRequestIsOriginFormWithHostAndVia() throws {
        let request = try HeadParser.parseRequest(Array((
            "GET http://api.test/v1/x?y=1 HTTP/1.1\r\nHost: wrong.test\r\nAccept: */*\r\nConnection: keep-alive, X-Secret\r\n"
            + "X-Secret: s\r\nKeep-Alive: 5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\n"
            + "Trailer: X\r\nUpgrade: websocket\r\nVia: 1.0 other\r\nProxy-Status: forged\r\nPROXY-Foo: x\r\n\r\n").utf8))
        let out = text(Forwarding.upstreamRequest(request, pathAndQuery: "/v1/x?y=1", host: "api.test", framing: .none))
        #expect(out.hasPrefix("GET /v1/x?y=1 HTTP/1.1\r\nHost: api.test\r\n"))
        #expect(out.contains("Accept: */*\r\n"))
        #expect(out.contains("Via: 1.0 other, 1.1 mtls-proxy\r\n"))
        #expect(out.contains("Trailer: X\r\n"))  // it names the trailer section, which passes too
        for gone in ["wrong.test", "X-Secret", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "TE:", "Upgrade",
                     "Connection", "Proxy-Status", "PROXY-Foo", "forged"] {
            #expect(!out.contains(gone), "\(gone) must not be forwarded")
        }
        #expect(out.hasSuffix("\r\n\r\n"))
    }

    @Test func teTrailersIsWrittenOnlyWhenAsked() throws {
        let request = try HeadParser.parseRequest(Array("GET http://a/ HTTP/1.1\r\nHost: a\r\nTE: gzip, Trailers\r\n\r\n".utf8))
        #expect(Forwarding.teListsTrailers(request.headers))
        let plain = text(Forwarding.upstreamRequest(request, pathAndQuery: "/", host: "a", framing: .none))
        #expect(!plain.contains("TE"))
        var out: [UInt8] = []
        Forwarding.upstreamRequest(request, pathAndQuery: "/", host: "a", bracketed: false, port: nil, framing: .none,
                                   teTrailers: true, into: &out)
        #expect(text(out).contains("Connection: TE\r\nTE: trailers\r\n"))
        #expect(!text(out).contains("gzip"))
        let other = try HeadParser.parseRequest(Array("GET http://a/ HTTP/1.1\r\nHost: a\r\nTE: gzip\r\n\r\n".utf8))
        #expect(!Forwarding.teListsTrailers(other.headers))
    }

    @Test func upstreamRequestStatesItsOwnFraming() throws {
        let chunked = try HeadParser.parseRequest(Array("POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".utf8))
        let out = text(Forwarding.upstreamRequest(chunked, pathAndQuery: "/", host: "a", framing: .chunked))
        #expect(out.contains("Transfer-Encoding: chunked\r\n"))
        let length = try HeadParser.parseRequest(Array("PUT http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n".utf8))
        let out2 = text(Forwarding.upstreamRequest(length, pathAndQuery: "/", host: "a", framing: .contentLength(7)))
        #expect(out2.contains("Content-Length: 7\r\n"))
        #expect(!out2.contains("Transfer-Encoding"))
    }

    @Test func clientResponseReframesAndClosesWhenItMust() throws {
        let head = try HeadParser.parseResponse(Array("HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nX-Keep: 2\r\n\r\n".utf8))
        let chunked = text(Forwarding.clientResponse(head, framing: .chunked, requestMethod: "GET", keepAlive: true, clientVersion: .http11))
        #expect(chunked.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(chunked.contains("Transfer-Encoding: chunked\r\n"))
        #expect(chunked.contains("X-Keep: 2\r\n"))
        #expect(!chunked.contains("X-Hop"))
        #expect(!chunked.contains("Connection: close"))

        let closing = text(Forwarding.clientResponse(head, framing: .close, requestMethod: "GET", keepAlive: true, clientVersion: .http10))
        #expect(closing.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(closing.contains("Connection: close\r\n"))
        #expect(!closing.contains("Transfer-Encoding"))
    }

    @Test func clientFramingForHTTP10Clients() {
        #expect(Forwarding.clientFraming(upstream: .chunked, clientVersion: .http10) == .close)
        #expect(Forwarding.clientFraming(upstream: .chunked, clientVersion: .http11) == .chunked)
        #expect(Forwarding.clientFraming(upstream: .untilClose, clientVersion: .http11) == .chunked)
        #expect(Forwarding.clientFraming(upstream: .contentLength(5), clientVersion: .http10) == .contentLength(5))
    }
}

@Suite struct ProxyStatusTests {
    @Test func formatsAnRFC9209Field() {
        let r = ProxyErrorResponse(status: 502, errorType: .tlsAlertReceived, details: "alert \"certificate_required\" \\ x")
        #expect(r.proxyStatusValue == "mtls-proxy; error=tls_alert_received; details=\"alert \\\"certificate_required\\\" \\\\ x\"")
    }

    @Test func serialisesAResponseWithBodyLength() {
        let r = ProxyErrorResponse(status: 403, errorType: .httpRequestDenied, details: "denied by route[3] *", advice: "Add a route.")
        let out = text(r.serialize(closeConnection: true))
        #expect(out.hasPrefix("HTTP/1.1 403 Forbidden\r\n"))
        #expect(out.contains("Connection: close\r\n"))
        let body = r.body
        #expect(out.hasSuffix("\r\n\r\n" + body))
        #expect(out.contains("Content-Length: \(body.utf8.count)\r\n"))
        #expect(body.contains("denied by route[3] *"))
    }

    @Test func nonASCIIDetailsAreReplaced() {
        #expect(ProxyErrorResponse.sfString("café\n") == "\"caf??\"")
    }
}

/// Review of issue 11: an IPv6 literal has one spelling, so a route naming `[::1]` also matches `[0:0::1]`.
@Suite struct HostSpellingTests {
    @Test(arguments: [
        ("[0:0:0:0:0:0:0:1]", "::1"), ("[0::1]", "::1"), ("[::0:1]", "::1"), ("[0000::0001]", "::1"),
        ("[FE80:0:0:0:0:0:0:AB]", "fe80::ab"), ("[2001:db8:0:0:1:0:0:1]", "2001:db8::1:0:0:1"),
        ("[1:0:0:2:0:0:0:3]", "1:0:0:2::3"), ("[1:2:3:4:5:6:7:8]", "1:2:3:4:5:6:7:8"), ("[1:0:2:3:4:5:6:7]", "1:0:2:3:4:5:6:7"),
        ("[::FFFF:127.0.0.1]", "::ffff:127.0.0.1"), ("[::ffff:7f00:1]", "::ffff:127.0.0.1"), ("[::]", "::"),
    ])
    func ipv6LiteralsAreCanonical(authority: String, host: String) throws {
        #expect(try AbsoluteTarget.parseAuthority(Array(authority.utf8)).host == host)
        #expect(try AbsoluteTarget.parse("http://\(authority):8443/x").host == host)
    }

    @Test(arguments: ["[1:::2]", "[1::2::3]", "[12345::1]", "[1:2:3:4:5:6:7:8:9]", "[1:2:3:4:5:6:7]", "[::1.2.3]",
                      "[::256.0.0.1]", "[:1::2]", "[1::2:]", "[::1.2.3.4:5]"])
    func malformedIPv6LiteralsAreRefused(authority: String) {
        #expect(throws: HTTPParseError.self) { try AbsoluteTarget.parseAuthority(Array(authority.utf8)) }
    }
}

/// Review of issue 11: an upgrade to HTTP/2 (`h2c`) turns one routed request into a connection that carries any
/// number of requests for any path, none of them routed; it is not passed on. WebSocket is one request.
@Suite struct UpgradeTokenTests {
    @Test func http2UpgradesAreNotForwarded() {
        #expect(Forwarding.forwardableUpgrade("h2c") == nil)
        #expect(Forwarding.forwardableUpgrade("H2C") == nil)
        #expect(Forwarding.forwardableUpgrade(" h2c , h2") == nil)
        #expect(Forwarding.forwardableUpgrade("h2c, websocket") == "websocket")
        #expect(Forwarding.forwardableUpgrade("websocket") == "websocket")
        #expect(Forwarding.forwardableUpgrade("WebSocket, foo/2") == "WebSocket, foo/2")
        #expect(Forwarding.forwardableUpgrade(" , ") == nil)
    }
}

/// Review of issue 11: fields that frameworks (Symfony, Zend/Laminas, IIS URL Rewrite) take as the request path
/// instead of the request line would let a client name a path no route decided; they are not forwarded.
@Suite struct PathOverrideFieldTests {
    @Test func pathOverrideFieldsAreNotForwarded() throws {
        let request = try HeadParser.parseRequest(Array((
            "GET http://api.test/v1 HTTP/1.1\r\nHost: api.test\r\nX-Original-URL: /admin/x\r\nx-rewrite-url: /admin/y\r\n"
            + "X-Original-Uri: /admin/z\r\nAccept: */*\r\n\r\n").utf8))
        let out = String(decoding: Forwarding.upstreamRequest(request, pathAndQuery: "/v1", host: "api.test", framing: .none), as: UTF8.self)
        #expect(!out.lowercased().contains("/admin"), "\(out)")
        #expect(out.contains("Accept: */*\r\n"))
    }
}
