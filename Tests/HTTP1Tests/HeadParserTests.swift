import Testing
@testable import HTTP1

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

private func parseRequest(_ s: String) throws -> RequestHead {
    try HeadParser.parseRequest(bytes(s))
}

private func requestError(_ s: String) -> HTTPParseError? {
    do {
        let head = try parseRequest(s)
        _ = try BodyFraming.forRequest(head)
        return nil
    } catch let e as HTTPParseError {
        return e
    } catch {
        return nil
    }
}

@Suite struct HeadLengthTests {
    @Test func findsTheEndOfTheHead() throws {
        let head = "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"
        #expect(try HeadParser.headLength(bytes(head + "BODY"), limit: 1000) == head.utf8.count)
    }

    @Test func waitsForMoreBytes() throws {
        #expect(try HeadParser.headLength(bytes("GET / HTTP/1.1\r\nHost: a\r\n"), limit: 1000) == nil)
        #expect(try HeadParser.headLength(bytes("GET / HTTP/1.1\r\nHost: a\r\n\r"), limit: 1000) == nil)
    }

    @Test func leadingEmptyLinesAreSkipped() throws {
        let head = "\r\n\r\nGET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"
        #expect(try HeadParser.headLength(bytes(head), limit: 1000) == head.utf8.count)
        #expect(try parseRequest(head).method == "GET")
    }

    @Test func bareCRAndBareLFAreRejected() {
        #expect(throws: HTTPParseError.bareCarriageReturn) { try HeadParser.headLength(bytes("GET / HTTP/1.1\rHost: a\r\n\r\n"), limit: 1000) }
        #expect(throws: HTTPParseError.bareLineFeed) { try HeadParser.headLength(bytes("GET / HTTP/1.1\nHost: a\r\n\r\n"), limit: 1000) }
    }

    @Test func oversizedHeadIsRejected() {
        let big = "GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 2000) + "\r\n\r\n"
        #expect(throws: HTTPParseError.headTooLarge(limit: 1024)) { try HeadParser.headLength(bytes(big), limit: 1024) }
        // Also before the end has arrived.
        #expect(throws: HTTPParseError.headTooLarge(limit: 1024)) { try HeadParser.headLength(bytes(String(big.prefix(1500))), limit: 1024) }
    }
}

@Suite struct RequestParsingTests {
    @Test func parsesAnAbsoluteFormRequest() throws {
        let head = try parseRequest("GET http://api.mygreatbank.test/v1/accounts?x=1 HTTP/1.1\r\nHost: api.mygreatbank.test\r\nAccept: */*\r\nX-Empty:\r\n\r\n")
        #expect(head.method == "GET")
        #expect(head.target == "http://api.mygreatbank.test/v1/accounts?x=1")
        #expect(head.version == .http11)
        #expect(head.headers.first("host") == "api.mygreatbank.test")
        #expect(head.headers.first("X-EMPTY") == "")
        #expect(head.headers.count == 3)
    }

    @Test func trimsOptionalWhitespaceAroundValues() throws {
        let head = try parseRequest("GET / HTTP/1.1\r\nHost: a\r\nX-A: \t value with  spaces \t\r\n\r\n")
        #expect(head.headers.first("x-a") == "value with  spaces")
    }

    @Test func keepsObsTextBytesExactly() throws {
        var raw = bytes("GET / HTTP/1.1\r\nHost: a\r\nX-Latin: caf")
        raw += [0xE9]
        raw += bytes("\r\n\r\n")
        let head = try HeadParser.parseRequest(raw)
        let value = try #require(head.headers.first("X-Latin"))
        var out: [UInt8] = []
        appendLatin1(value, to: &out)
        #expect(out == bytes("caf") + [0xE9])
    }

    @Test(arguments: [
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", HTTPParseError.invalidRequestLine),
        ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", HTTPParseError.invalidRequestLine),
        ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", HTTPParseError.invalidMethod),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", HTTPParseError.unsupportedVersion("HTTP/2.0")),
        ("GET / http/1.1\r\nHost: a\r\n\r\n", HTTPParseError.invalidRequestLine),
        ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", HTTPParseError.obsoleteLineFolding),
        ("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", HTTPParseError.headerWithoutColon),
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", HTTPParseError.whitespaceBeforeColon),
        ("GET / HTTP/1.1\r\nHo(st: a\r\n\r\n", HTTPParseError.invalidFieldName),
        ("GET / HTTP/1.1\r\n: a\r\n\r\n", HTTPParseError.invalidFieldName),
        ("GET / HTTP/1.1\r\nX: a\u{0}b\r\n\r\n", HTTPParseError.invalidFieldValue(name: "X")),
        ("GET / HTTP/1.1\r\nX: a\u{7F}b\r\n\r\n", HTTPParseError.invalidFieldValue(name: "X")),
    ])
    func rejectsMalformedHeads(_ input: String, _ expected: HTTPParseError) {
        #expect(requestError(input) == expected)
    }

    @Test func rejectsATargetWithControlCharacters() {
        #expect(requestError("GET /a\u{1}b HTTP/1.1\r\nHost: a\r\n\r\n") == .invalidTarget("only visible ASCII characters are allowed"))
    }

    @Test func limitsTheNumberOfHeaders() {
        var s = "GET / HTTP/1.1\r\n"
        for i in 0..<10 { s += "X-\(i): v\r\n" }
        s += "\r\n"
        #expect(throws: HTTPParseError.tooManyHeaders(limit: 5)) {
            try HeadParser.parseRequest(bytes(s), limits: HeadLimits(maxHeadBytes: 65536, maxHeaderCount: 5))
        }
    }

    @Test func keepAliveFollowsVersionAndConnection() throws {
        #expect(try parseRequest("GET / HTTP/1.1\r\nHost: a\r\n\r\n").wantsKeepAlive)
        #expect(try !parseRequest("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").wantsKeepAlive)
        #expect(try !parseRequest("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n").wantsKeepAlive)
        #expect(try !parseRequest("GET / HTTP/1.0\r\n\r\n").wantsKeepAlive)
        #expect(try parseRequest("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").wantsKeepAlive)
    }
}

@Suite struct RequestFramingTests {
    @Test func contentLength() throws {
        #expect(try BodyFraming.forRequest(parseRequest("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n")) == .contentLength(42))
        #expect(try BodyFraming.forRequest(parseRequest("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")) == BodyFraming.none)
        #expect(try BodyFraming.forRequest(parseRequest("GET / HTTP/1.1\r\nHost: a\r\n\r\n")) == BodyFraming.none)
    }

    @Test func identicalRepeatedContentLengthsFold() throws {
        #expect(try BodyFraming.forRequest(parseRequest("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")) == .contentLength(5))
        #expect(try BodyFraming.forRequest(parseRequest("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n")) == .contentLength(5))
    }

    @Test func chunked() throws {
        #expect(try BodyFraming.forRequest(parseRequest("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")) == .chunked)
        #expect(try BodyFraming.forRequest(parseRequest("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n")) == .chunked)
    }

    @Test(arguments: [
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", HTTPParseError.contentLengthAndTransferEncoding),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", HTTPParseError.conflictingContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", HTTPParseError.conflictingContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", HTTPParseError.invalidContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", HTTPParseError.invalidContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", HTTPParseError.invalidContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", HTTPParseError.invalidContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", HTTPParseError.invalidContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", HTTPParseError.invalidContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", HTTPParseError.unsupportedTransferEncoding("gzip, chunked")),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", HTTPParseError.chunkedMoreThanOnce),
        // chunked with a parameter is still chunked (RFC 9112 §7: the coding's name decides): applied twice, 400.
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x, chunked\r\n\r\n", HTTPParseError.chunkedMoreThanOnce),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked ; q=1\r\nTransfer-Encoding: chunked\r\n\r\n", HTTPParseError.chunkedMoreThanOnce),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", HTTPParseError.transferEncodingNotEndingInChunked("xchunked")),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n", HTTPParseError.transferEncodingNotEndingInChunked("chunked, identity")),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HTTPParseError.transferEncodingInHTTP10),
    ])
    func rejectsAmbiguousFraming(_ input: String, _ expected: HTTPParseError) {
        #expect(requestError(input) == expected)
    }
}

@Suite struct ResponseParsingTests {
    private func response(_ s: String) throws -> ResponseHead { try HeadParser.parseResponse(bytes(s)) }

    @Test func parsesAStatusLine() throws {
        let head = try response("HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\n")
        #expect(head.status == 404)
        #expect(head.reason == "Not Found")
        #expect(try BodyFraming.forResponse(head, requestMethod: "GET") == .contentLength(3))
    }

    @Test func acceptsAnEmptyReason() throws {
        #expect(try response("HTTP/1.1 200 \r\n\r\n").reason == "")
        #expect(try response("HTTP/1.1 200\r\n\r\n").status == 200)
    }

    @Test func rejectsMalformedStatusLines() {
        #expect(throws: HTTPParseError.self) { try response("HTTP/1.1 20 OK\r\n\r\n") }
        #expect(throws: HTTPParseError.self) { try response("HTTP/1.1 2000 OK\r\n\r\n") }
        #expect(throws: HTTPParseError.self) { try response("HTTP/1.1 abc OK\r\n\r\n") }
        #expect(throws: HTTPParseError.self) { try response("ICY 200 OK\r\n\r\n") }
    }

    @Test func framingFollowsRFC9112Section6_3() throws {
        let chunked = try response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        #expect(try BodyFraming.forResponse(chunked, requestMethod: "GET") == .chunked)
        #expect(try BodyFraming.forResponse(chunked, requestMethod: "HEAD") == BodyFraming.none)
        #expect(try BodyFraming.forResponse(response("HTTP/1.1 204 No Content\r\n\r\n"), requestMethod: "GET") == BodyFraming.none)
        #expect(try BodyFraming.forResponse(response("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"), requestMethod: "GET") == BodyFraming.none)
        #expect(try BodyFraming.forResponse(response("HTTP/1.1 200 OK\r\n\r\n"), requestMethod: "GET") == .untilClose)
        #expect(try BodyFraming.forResponse(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), requestMethod: "GET") == .untilClose)
        #expect(throws: HTTPParseError.contentLengthAndTransferEncoding) {
            try BodyFraming.forResponse(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"), requestMethod: "GET")
        }
    }

    @Test func reuseFollowsConnectionHeader() throws {
        #expect(try response("HTTP/1.1 200 OK\r\n\r\n").allowsReuse)
        #expect(try !response("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").allowsReuse)
        #expect(try !response("HTTP/1.0 200 OK\r\n\r\n").allowsReuse)
    }
}

@Suite struct IncrementalHeadScanTests {
    @Test func tricklingGivesTheSameAnswerWithoutRescanning() throws {
        let head = Array("\r\nGET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Long: \(String(repeating: "v", count: 500))\r\n\r\nBODY".utf8)
        let expected = try HeadParser.headLength(head, limit: 4096)
        var scan = HeadParser.Scan()
        var found: Int?
        for end in 1...head.count {
            let before = scan
            found = try Array(head[0..<end]).withUnsafeBytes { try HeadParser.headLength($0, limit: 4096, resuming: &scan) }
            if found != nil { break }
            // Each call looks only at what it had not seen (a CR at the very end is looked at again).
            #expect(scan.next >= before.next)
            #expect(scan.next >= end - 1)
        }
        #expect(found == expected)
    }

    @Test func errorsAreFoundWhenTheBadByteArrives() throws {
        let bad = Array("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n".utf8)
        var scan = HeadParser.Scan()
        var thrown: HTTPParseError?
        for end in 1...bad.count {
            do {
                _ = try Array(bad[0..<end]).withUnsafeBytes { try HeadParser.headLength($0, limit: 4096, resuming: &scan) }
            } catch let e as HTTPParseError {
                thrown = e
                break
            }
        }
        #expect(thrown == .bareCarriageReturn)
    }
}

@Suite struct ResponseStartLineErrorTests {
    /// A response that does not start with an HTTP version was reported as a "malformed request line
    /// (expected: METHOD SP target ...)", which sends an operator reading the 502 after the wrong party.
    @Test func aResponseWithoutAVersionIsAMalformedStatusLine() {
        for text in ["garbage here and there\r\n\r\n", "HTTX/1.1 200 OK\r\n\r\n", "HTTP/1.12 200 OK\r\n\r\n"] {
            #expect(throws: HTTPParseError.invalidStatusLine) { try HeadParser.parseResponse(Array(text.utf8)) }
        }
    }
}

/// The Host grammar the proxy accepts: `host [ ":" port ]` (RFC 3986), no empty name, no sub-delims.
@Suite struct HostFieldTests {
    @Test func theUnreservedSetIsRFC3986s() {
        for c in 0...255 {
            let scalar = Unicode.Scalar(UInt8(c))
            let expected = c < 128 && (("a"..."z").contains(Character(scalar)) || ("A"..."Z").contains(Character(scalar))
                                       || ("0"..."9").contains(Character(scalar)) || "-._~".unicodeScalars.contains(scalar))
            #expect(HostField.isUnreserved(UInt8(c)) == expected, "byte \(c)")
        }
    }

    @Test(arguments: ["a", "api.mygreatbank.test", "API.test.", "a_b-c~d", "127.0.0.1", "127.0.0.1:8080", "[::1]", "[::1]:443",
                      "[2001:db8::a:1]", "x:", "bl%41ck.test", "host:65535"])
    func validHosts(_ value: String) { #expect(HostField.isValid(value)) }

    @Test(arguments: ["", ":80", "a b", "a/b", "a?b", "a#b", "u@a", "a,b", "a;b", "a!b", "a=b", "a:80:80", "a:8o", "a:65536",
                      "a:123456", "[::1", "[]", "[::1]x", "[::1]:x", "%4", "a%zz", "a\tb", "é.test"])
    func invalidHosts(_ value: String) { #expect(!HostField.isValid(value)) }
}
