import Testing
@testable import HTTP1

private func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

/// The header reads and the forwarded heads that are computed in place (no split values, no copied field list):
/// the same answers as the list-element reading, exact output bytes.
@Suite struct InPlaceHeaderTests {
    static let lists = ["close", "Close", " close ", "keep-alive, close", ",,close,,", "\tclose\t,x", "closed", "clo se",
                        "keep-alive", "KEEP-ALIVE", "x, Keep-Alive", "", ",", " , ", "upgrade", "Upgrade, keep-alive", "a,b,,c"]

    @Test func containsListElementAgreesWithListElements() {
        for first in Self.lists {
            for second in [nil] + Self.lists.map(Optional.some) {
                var headers = HTTPHeaders([("Connection", first), ("X", "close")])
                if let second { headers.add("connection", second) }
                for token in ["close", "keep-alive", "upgrade", "x", "a", "c", ""] {
                    let reference = headers.listElements("Connection").contains { $0.equalsIgnoringASCIICase(token) }
                    #expect(headers.containsListElement("Connection", token) == reference, "\(first) | \(second ?? "-") | \(token)")
                }
            }
        }
    }

    @Test func keepAliveAndReuseFollowEveryConnectionField() {
        for version in [HTTPVersion.http10, .http11] {
            for first in Self.lists {
                for second in [nil, "close", "keep-alive", "x"] {
                    var headers = HTTPHeaders([("Connection", first)])
                    if let second { headers.add("CONNECTION", second) }
                    let elements = headers.listElements("Connection")
                    let expected = elements.contains(where: { $0.equalsIgnoringASCIICase("close") }) ? false
                        : version == .http10 ? elements.contains(where: { $0.equalsIgnoringASCIICase("keep-alive") }) : true
                    #expect(RequestHead(method: "GET", target: "/", version: version, headers: headers).wantsKeepAlive == expected)
                    #expect(ResponseHead(version: version, status: 200, reason: "OK", headers: headers).allowsReuse == expected)
                }
            }
        }
    }

    @Test func everyConnectionFieldNamesFieldsToDrop() throws {
        let head = try HeadParser.parseResponse(Array((
            "HTTP/1.1 203 Non-Authoritative Information\r\nConnection: keep-alive\r\nX-A: 1\r\nconnection: , x-a ,,\tX-B\r\n"
            + "X-B: 2\r\nX-C: 3\r\nVia: 1.0 one\r\nContent-Length: 12345678901\r\nvia: 1.1 two\r\nX-a: 4\r\n\r\n").utf8))
        let out = text(Forwarding.clientResponse(head, framing: .contentLength(12_345_678_901), requestMethod: "GET",
                                                 keepAlive: true, clientVersion: .http11))
        #expect(out == "HTTP/1.1 203 Non-Authoritative Information\r\nX-C: 3\r\nVia: 1.0 one, 1.1 two, 1.1 mtls-proxy\r\n"
                + "Content-Length: 12345678901\r\n\r\n")
    }

    @Test func headAnswersKeepTheAnnouncedLength() throws {
        let head = try HeadParser.parseResponse(Array("HTTP/1.1 200 OK\r\nContent-Length: 42\r\nContent-Length: 42\r\n\r\n".utf8))
        let out = text(Forwarding.clientResponse(head, framing: .none, requestMethod: "HEAD", keepAlive: false, clientVersion: .http10))
        #expect(out == "HTTP/1.1 200 OK\r\nVia: 1.1 mtls-proxy\r\nContent-Length: 42\r\nConnection: close\r\n\r\n")
        let zero = try HeadParser.parseResponse(Array("HTTP/1.0 404 \r\n\r\n".utf8))
        #expect(text(Forwarding.clientResponse(zero, framing: .none, requestMethod: "GET", keepAlive: true, clientVersion: .http10))
                == "HTTP/1.1 404 \r\nVia: 1.1 mtls-proxy\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n")
    }

    @Test func upstreamRequestIsExact() throws {
        let request = try HeadParser.parseRequest(Array((
            "POST http://a.test/p HTTP/1.1\r\nHost: a.test\r\nConnection: x-drop\r\nX-Drop: 1\r\nAccept: */*\r\n"
            + "Proxy-Authorization: Basic eA==\r\nContent-Length: 0\r\nX-Latin: caf\u{E9}\r\n\r\n").utf8))
        let out = Forwarding.upstreamRequest(request, pathAndQuery: "/p", host: "a.test", framing: .none)
        var expected = Array("POST /p HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\nX-Latin: caf".utf8)
        expected += [0xC3, 0xA9]  // the received bytes, unchanged
        expected += Array("\r\nVia: 1.1 mtls-proxy\r\nContent-Length: 0\r\n\r\n".utf8)
        #expect(out == expected)
        let big = Forwarding.upstreamRequest(request, pathAndQuery: "/p", host: "a.test", framing: .contentLength(UInt64.max))
        #expect(text(big).hasSuffix("Content-Length: 18446744073709551615\r\n\r\n"))
    }

    @Test func requestFramingReadsLengthsInPlace() throws {
        func framing(_ fields: String, _ version: String = "HTTP/1.1") throws -> BodyFraming {
            try BodyFraming.forRequest(HeadParser.parseRequest(Array("POST /x \(version)\r\nHost: a\r\n\(fields)\r\n".utf8)))
        }
        #expect(try framing("Content-Length: 5\r\n") == .contentLength(5))
        #expect(try framing("Content-Length: 5, 5\r\nContent-Length: 5\r\n") == .contentLength(5))
        #expect(try framing("Content-Length: 0\r\n") == BodyFraming.none)
        #expect(try framing("Content-Length: 999999999999999999\r\n") == .contentLength(999_999_999_999_999_999))
        #expect(try framing("Transfer-Encoding: Chunked\r\n") == .chunked)
        #expect(try framing("Transfer-Encoding: ,chunked,\r\n") == .chunked)
        for bad in ["Content-Length: 5,\r\n", "Content-Length: ,5\r\n", "Content-Length: +5\r\n", "Content-Length: 5 5\r\n",
                    "Content-Length: 1000000000000000000\r\n", "Content-Length: 5\r\nContent-Length: 6\r\n",
                    "Transfer-Encoding: gzip, chunked\r\n", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                    "Transfer-Encoding: \r\n"] {
            #expect(throws: HTTPParseError.self, "\(bad)") { try framing(bad) }
        }
    }

    @Test func responseFramingReadsTransferEncodingInPlace() throws {
        func framing(_ fields: String, _ version: String = "HTTP/1.1") throws -> BodyFraming {
            try BodyFraming.forResponse(HeadParser.parseResponse(Array("\(version) 200 OK\r\n\(fields)\r\n".utf8)), requestMethod: "GET")
        }
        #expect(try framing("Transfer-Encoding: chunked\r\n") == .chunked)
        #expect(try framing("Transfer-Encoding: gzip\r\n") == .untilClose)
        #expect(try framing("Transfer-Encoding: \r\n") == .untilClose)
        #expect(try framing("Transfer-Encoding: chunked\r\n", "HTTP/1.0") == .untilClose)
        #expect(throws: HTTPParseError.self) { try framing("Transfer-Encoding: gzip, chunked\r\n") }
        #expect(try framing("Content-Length: 3, 3\r\n") == .contentLength(3))
    }

    @Test func absoluteTargetsParsedInPlace() throws {
        let t = try AbsoluteTarget.parse("HTTP://Host.Example.TEST.?x=1")
        #expect(t.scheme == "http" && t.host == "host.example.test" && t.explicitPort == nil && t.pathAndQuery == "/?x=1")
        let v6 = try AbsoluteTarget.parse("HttpS://[::1]:8443")
        #expect(v6.scheme == "https" && v6.host == "::1" && v6.explicitPort == 8443 && v6.pathAndQuery == "/")
        #expect(v6.isIPv6Literal && v6.hostHeader(port: 8443, defaultPort: 443) == "[::1]:8443")
        #expect(try AbsoluteTarget.parse("http://a.test:80/p/q").hostHeader(port: 80, defaultPort: 443) == "a.test:80")
        #expect(try AbsoluteTarget.parse("http://a.test/p/q").hostHeader(port: 443, defaultPort: 443) == "a.test")
        for bad in ["ftp://a/", "/x", "http://a/#f", "http://u@a/", "http://", "http://a:0/", "http://a:65536/", "http://a..b/",
                    "http:/a/", "h://a/"] {
            #expect(throws: HTTPParseError.self, "\(bad)") { try AbsoluteTarget.parse(bad) }
        }
    }

    @Test func headsWithManyFieldsAndTrailingPartialLines() throws {
        let many = (0..<200).map { "X-\($0): \($0)\r\n" }.joined()
        let head = try HeadParser.parseRequest(Array("GET / HTTP/1.1\r\nHost: a\r\n\(many)\r\n".utf8))
        #expect(head.headers.count == 201 && head.headers.first("X-199") == "199")
        let tooMany = (0..<256).map { "X-\($0): \($0)\r\n" }.joined()
        #expect(throws: HTTPParseError.self) { try HeadParser.parseRequest(Array("GET / HTTP/1.1\r\nHost: a\r\n\(tooMany)\r\n".utf8)) }
        // A line without its CRLF at the very end is not part of the head (the framing decides where a head ends).
        let partial = try HeadParser.parseRequest(Array("GET / HTTP/1.1\r\nHost: a\r\nX: y".utf8))
        #expect(partial.headers.count == 1)
    }
}

@Suite struct FieldRoleTests {
    /// The role switch names exactly the fixed hop-by-hop fields, whatever their case.
    @Test func rolesAgreeWithTheHopByHopList() {
        let names = Forwarding.hopByHop + ["via", "host", "x", "tE", "te2", "vía", "Hosts", "Connectio", "keep_alive", "Content-Type",
                                           "Proxy-Status", "Transfer-Encodings", "upgrade-insecure-requests", ""]
        for name in names {
            for spelled in [name, name.uppercased(), String(name.enumerated().map { $0.offset % 2 == 0 ? Character($0.element.uppercased()) : $0.element })] {
                let listed = Forwarding.hopByHop.contains { $0.equalsIgnoringASCIICase(spelled) }
                #expect(Forwarding.isHopByHop(spelled) == listed, "\(spelled)")
            }
        }
        #expect(Forwarding.role("VIA") == .via && Forwarding.role("Host") == .host && Forwarding.role("CONNECTION") == .connection)
        #expect(Forwarding.role("content-LENGTH") == .contentLength && Forwarding.role("Hostx") == .other)
    }

    @Test func responsesKeepHostAndRequestsDropIt() throws {
        let response = try HeadParser.parseResponse(Array("HTTP/1.1 200 OK\r\nHost: h\r\nContent-Length: 1\r\n\r\n".utf8))
        let out = String(decoding: Forwarding.clientResponse(response, framing: .contentLength(1), requestMethod: "GET", keepAlive: true,
                                                             clientVersion: .http11), as: UTF8.self)
        #expect(out == "HTTP/1.1 200 OK\r\nHost: h\r\nVia: 1.1 mtls-proxy\r\nContent-Length: 1\r\n\r\n")
    }
}
