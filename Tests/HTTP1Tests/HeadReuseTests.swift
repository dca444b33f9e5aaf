import Testing
@testable import HTTP1

/// Heads parsed into the buffers of an earlier head (a warm keep-alive connection) are the same heads as parsed
/// fresh: nothing of the earlier head shows through, whatever its size.
@Suite struct HeadReuseTests {
    static let requests = [
        "GET http://api.mygreatbank.test/v1/accounts?x=1 HTTP/1.1\r\nHost: api.mygreatbank.test\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nVia: 1.0 a\r\nX-Long: \(String(repeating: "v", count: 300))\r\n\r\n",
        "POST http://b.test/ HTTP/1.0\r\nHost: b.test\r\nContent-Length: 3\r\n\r\n",
        "\r\nDELETE http://c.test/x HTTP/1.1\r\nHost: c.test\r\nX-Latin: caf\u{E9}\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
    ]
    static let responses = [
        "HTTP/1.1 200 OK\r\nDate: Sun, 29 Nov 2026 09:26:41 GMT\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n",
        "HTTP/1.1 404 A much longer reason phrase than usual\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.0 204\r\n\r\n",
        "HTTP/1.1 302 Found\r\nLocation: https://x.test/a\r\nVia: 1.1 u\r\nX: caf\u{E9}\r\n\r\n",
    ]

    @Test func aRequestParsedIntoAnEarlierHeadEqualsOneParsedFresh() throws {
        for first in Self.requests {
            for second in Self.requests {
                var head = RequestHead()
                try latin1Bytes(first).withUnsafeBytes { try HeadParser.parseRequest($0, into: &head) }
                let bytes = latin1Bytes(second)
                try bytes.withUnsafeBytes { try HeadParser.parseRequest($0, into: &head) }
                let fresh = try HeadParser.parseRequest(bytes)
                #expect(head == fresh)
                #expect(head.target == fresh.target && head.method == fresh.method && head.headers.fields == fresh.headers.fields)
                #expect(Forwarding.upstreamRequest(head, pathAndQuery: "/p", host: "h", framing: .none)
                        == Forwarding.upstreamRequest(fresh, pathAndQuery: "/p", host: "h", framing: .none))
            }
        }
    }

    @Test func aResponseParsedIntoAnEarlierHeadEqualsOneParsedFresh() throws {
        for first in Self.responses {
            for second in Self.responses {
                var head = ResponseHead()
                try latin1Bytes(first).withUnsafeBytes { try HeadParser.parseResponse($0, into: &head) }
                try latin1Bytes(second).withUnsafeBytes { try HeadParser.parseResponse($0, into: &head) }
                let fresh = try HeadParser.parseResponse(latin1Bytes(second))
                #expect(head == fresh)
                #expect(head.reason == fresh.reason && head.headers.fields == fresh.headers.fields)
                var reused: [UInt8] = Array(repeating: 0x41, count: 1000)
                Forwarding.clientResponse(head, framing: .none, requestMethod: "GET", keepAlive: true, clientVersion: .http11, into: &reused)
                #expect(reused == Forwarding.clientResponse(fresh, framing: .none, requestMethod: "GET", keepAlive: true, clientVersion: .http11))
            }
        }
    }

    /// A head built from Strings and the same head parsed compare equal, field by field, Latin-1 included.
    @Test func builtAndParsedHeadsCompareByContent() throws {
        let parsed = try HeadParser.parseRequest(latin1Bytes("GET /a HTTP/1.1\r\nHost: h\r\nX: caf\u{E9}\r\n\r\n"))
        let built = RequestHead(method: "GET", target: "/a", headers: HTTPHeaders([("Host", "h"), ("X", "caf\u{E9}")]))
        #expect(parsed == built)
        #expect(parsed.headers.first("x") == "caf\u{E9}")
        #expect(parsed != RequestHead(method: "GET", target: "/b", headers: built.headers))
    }

    /// A host equal to a known one (ignoring case) comes back as that very String; any other is made as before.
    @Test func knownAndRecentHostsAreShared() throws {
        let known = KnownHosts(["api.mygreatbank.test", "b.test"])
        func parse(_ target: String, recent: String? = nil) throws -> AbsoluteTarget {
            var text = target
            return try text.withUTF8 { try AbsoluteTarget.parse($0, knownHosts: known, recentHost: recent) }
        }
        #expect(try parse("http://API.MyGreatBank.test./x").host == "api.mygreatbank.test")
        #expect(try parse("http://other.test/x", recent: "other.test").host == "other.test")
        #expect(try parse("http://other.test:8080/x", recent: "different.test").host == "other.test")
        #expect(try parse("http://b.test/x") == AbsoluteTarget.parse("http://b.test/x"))
        #expect(known.lookUp(UnsafeBufferPointer(start: nil, count: 0)) == nil)
        #expect(throws: HTTPParseError.self) { try parse("http://bad..host/") }
    }
}

private func latin1Bytes(_ text: String) -> [UInt8] {
    text.unicodeScalars.map { UInt8(truncatingIfNeeded: $0.value) }
}

@Suite struct TokenCharTests {
    /// The bit set names exactly the tchar of RFC 9110 §5.6.2.
    @Test func theBitSetIsTheListOfTokenCharacters() {
        let listed = Set("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)
        for c in 0...255 {
            #expect(isTokenChar(UInt8(c)) == listed.contains(UInt8(c)), "byte \(c)")
        }
    }
}

@Suite struct WordAtATimeValueTests {
    /// Values read eight bytes at a time: a control character or DEL at any position of a value of any length
    /// is refused, every other byte (HTAB, obs-text) is kept, and a line cut short at any byte is not a field.
    @Test func everyPositionOfEveryLengthIsChecked() throws {
        for length in 1...26 {
            for position in 0..<length {
                for bad: UInt8 in [0x00, 0x01, 0x0A, 0x0D, 0x1F, 0x7F, 0x09, 0x80, 0xFF, 0x20] {
                    var value = [UInt8](repeating: 0x61, count: length)
                    value[position] = bad
                    let head = Array("GET / HTTP/1.1\r\nX-Field: ".utf8) + value + Array("\r\nY: z\r\n\r\n".utf8)
                    let valid = bad == 0x09 || (bad >= 0x20 && bad != 0x7F)
                    let parsed = Result { try HeadParser.parseRequest(head) }
                    switch parsed {
                    case .success(let h):
                        #expect(valid, "length \(length), byte \(bad) at \(position)")
                        var trimmed = value[...]
                        while let f = trimmed.first, f == 0x20 || f == 0x09 { trimmed = trimmed.dropFirst() }
                        while let l = trimmed.last, l == 0x20 || l == 0x09 { trimmed = trimmed.dropLast() }
                        #expect(h.headers.first("x-field") == latin1(trimmed) && h.headers.first("Y") == "z")
                    case .failure(let error):
                        #expect(!valid, "length \(length), byte \(bad) at \(position): \(error)")
                    }
                    // Cut anywhere inside the value: never a crash, never the field.
                    let cut = Array(head[0..<(25 + position + 1)])
                    if let h = try? HeadParser.parseRequest(cut) { #expect(h.headers.count == 0) }
                }
            }
        }
    }
}

@Suite struct LineByteScanTests {
    /// The word-at-a-time search for CR or LF finds what a byte-by-byte search finds, from every start, with
    /// look-alike bytes (0x0B, 0x0C, 0x8A, 0x8D, 0x0E, 0x09) around.
    @Test func sameAsByteByByte() {
        let fillers: [UInt8] = [0x61, 0x0B, 0x0C, 0x8A, 0x8D, 0x0E, 0x09, 0xFF, 0x00]
        for length in 0...20 {
            for special in [nil, UInt8(0x0D), UInt8(0x0A)] {
                for position in 0..<max(length, 1) {
                    for filler in fillers {
                        var bytes = [UInt8](repeating: filler, count: length)
                        if let special, position < length { bytes[position] = special }
                        bytes.withUnsafeBytes { raw in
                            for start in 0...length {
                                var expected = start
                                while expected < length && raw[expected] != 0x0D && raw[expected] != 0x0A { expected += 1 }
                                #expect(HeadParser.nextLineByte(raw, from: start) == expected)
                            }
                        }
                    }
                }
            }
        }
    }
}

@Suite struct ConnectionOptionsTests {
    /// Fields named by `Connection` are dropped whether the value holds only `close`/`keep-alive` (the fast
    /// path) or other names too, and in every case of spelling.
    @Test func namedFieldsAreDroppedOnBothPaths() throws {
        let cases: [(String, [String], [String])] = [
            ("close", ["Close", "X-Keep"], ["X-Keep"]),
            ("KEEP-ALIVE", ["Close", "X-Keep"], ["Close", "X-Keep"]),
            ("keep-alive, close", ["CLOSE", "x-keep"], ["x-keep"]),
            ("keep-alive, X-Keep", ["Close", "X-Keep", "X-Other"], ["Close", "X-Other"]),
            ("", ["Close", "X-Keep"], ["Close", "X-Keep"]),
        ]
        for (connection, fields, kept) in cases {
            var text = "HTTP/1.1 200 OK\r\nConnection: \(connection)\r\n"
            for f in fields { text += "\(f): v\r\n" }
            let head = try HeadParser.parseResponse(Array((text + "Content-Length: 0\r\n\r\n").utf8))
            let out = Forwarding.clientResponse(head, framing: .none, requestMethod: "GET", keepAlive: true, clientVersion: .http11)
            let forwarded = try HeadParser.parseResponse(out).headers.fields.map(\.name).filter { $0 != "Via" && $0 != "Content-Length" }
            #expect(forwarded == kept, "Connection: \(connection)")
        }
    }
}

@Suite struct HostInPartsTests {
    /// The Host value written from its parts is the one `AbsoluteTarget.hostHeader` spells.
    @Test func sameHostAsHostHeader() throws {
        let request = try HeadParser.parseRequest(Array("GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        for url in ["http://a.test/", "http://a.test:8443/", "http://[::1]/", "http://[0:0::1]:8443/", "http://a.test:443/", "http://10.0.0.1:80/"] {
            let target = try AbsoluteTarget.parse(url)
            let port = target.explicitPort ?? 443
            let viaString = Forwarding.upstreamRequest(request, pathAndQuery: "/", host: target.hostHeader(port: port, defaultPort: 443), framing: .none)
            var inParts: [UInt8] = []
            Forwarding.upstreamRequest(request, pathAndQuery: "/", host: target.host, bracketed: target.isIPv6Literal,
                                       port: port == 443 ? nil : port, framing: .none, into: &inParts)
            #expect(inParts == viaString, "\(url)")
        }
    }
}
