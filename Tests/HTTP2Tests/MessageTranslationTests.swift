import Testing
import HTTP1
@testable import HTTP2

/// RFC 9113 §8: HTTP/1.1 requests to HTTP/2 header lists and HTTP/2 responses back to HTTP/1.1 heads.
@Suite struct MessageTranslationTests {
    private func request(_ fields: [(String, String)], method: String = "GET", target: String = "/a?b=1") -> RequestHead {
        RequestHead(method: method, target: target, headers: HTTPHeaders(fields))
    }

    @Test func pseudoFieldsComeFirstAndHostBecomesAuthority() {
        let fields = MessageTranslation.requestFields(request([("Host", "api.example:8443"), ("Accept", "*/*")]))
        #expect(fields == [
            H2Field(":method", "GET"), H2Field(":scheme", "https"), H2Field(":authority", "api.example:8443"),
            H2Field(":path", "/a?b=1"), H2Field("accept", "*/*"),
        ])
    }

    @Test func hopByHopFieldsAndThoseConnectionNamesAreRemoved() {
        let fields = MessageTranslation.requestFields(request([
            ("Host", "h"), ("Connection", "keep-alive, X-Secret-Hop"), ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"), ("Transfer-Encoding", "chunked"), ("Upgrade", "websocket"),
            ("X-Secret-Hop", "1"), ("X-Kept", "2"), ("Content-Type", "text/plain"),
        ], method: "POST", target: "/"))
        #expect(fields.map(\.name) == [":method", ":scheme", ":authority", ":path", "x-kept", "content-type"])
    }

    @Test func teOnlyPassesAsTrailers() {
        let dropped = MessageTranslation.requestFields(request([("Host", "h"), ("TE", "gzip, deflate")]))
        #expect(!dropped.contains { $0.name == "te" })
        let kept = MessageTranslation.requestFields(request([("Host", "h"), ("TE", "gzip, trailers;q=1")]))
        #expect(kept.last == H2Field("te", "trailers"))
        // As the proxy writes it for an HTTP/2 route: TE named by Connection (RFC 9110 §10.1.4) still passes.
        let named = MessageTranslation.requestFields(request([("Host", "h"), ("Connection", "TE"), ("TE", "trailers")]))
        #expect(named.last == H2Field("te", "trailers"))
        #expect(!named.contains { $0.name == "connection" })
    }

    @Test func contentLengthPassesForNghttp2ToCheck() {
        let fields = MessageTranslation.requestFields(request([("Host", "h"), ("Content-Length", "4")], method: "PUT", target: "/"))
        #expect(fields.contains(H2Field("content-length", "4")))
    }

    @Test func trailerSectionLosesConnectionFieldsAndPseudoFields() {
        let fields = MessageTranslation.trailerFields([
            HTTPField(name: "X-Checksum", value: "abc"), HTTPField(name: "Connection", value: "close"),
            HTTPField(name: ":path", value: "/evil"), HTTPField(name: "Transfer-Encoding", value: "chunked"),
        ])
        #expect(fields == [H2Field("x-checksum", "abc")])
    }

    @Test func responseWithoutLengthIsChunkedForHTTP1() throws {
        let (head, framing) = try MessageTranslation.responseHead([H2Field(":status", "200"), H2Field("content-type", "text/plain")],
                                                                  requestMethod: "GET", endStream: false)
        #expect(head.status == 200)
        #expect(head.reason == "OK")
        #expect(framing == .chunked)
        #expect(head.headers.first("transfer-encoding") == "chunked")
    }

    @Test func responseWithLengthKeepsIt() throws {
        let (head, framing) = try MessageTranslation.responseHead([H2Field(":status", "201"), H2Field("content-length", "12")],
                                                                  requestMethod: "POST", endStream: false)
        #expect(framing == .contentLength(12))
        #expect(head.headers.first("content-length") == "12")
        #expect(!head.headers.contains("transfer-encoding"))
    }

    @Test func headersThatEndTheStreamGetAZeroLength() throws {
        let (head, framing) = try MessageTranslation.responseHead([H2Field(":status", "200")], requestMethod: "GET", endStream: true)
        #expect(framing == .none)
        #expect(head.headers.first("content-length") == "0")
    }

    @Test func headAnd204And304HaveNoBody() throws {
        for (method, status) in [("HEAD", "200"), ("GET", "204"), ("GET", "304")] {
            let (head, framing) = try MessageTranslation.responseHead(
                [H2Field(":status", status), H2Field("content-length", "99")], requestMethod: method, endStream: false)
            #expect(framing == .none)
            #expect(!head.headers.contains("transfer-encoding"))
        }
    }

    @Test func interimResponseTranslates() throws {
        let (head, framing) = try MessageTranslation.responseHead([H2Field(":status", "100")], requestMethod: "POST", endStream: false)
        #expect(head.status == 100)
        #expect(framing == .none)
        var bytes: [UInt8] = []
        MessageTranslation.HTTP1Bytes.head(head, into: &bytes)
        #expect(String(decoding: bytes, as: UTF8.self) == "HTTP/1.1 100 Continue\r\n\r\n")
    }

    @Test func malformedResponseHeadsAreRefused() {
        #expect(throws: H2TranslationError.missingStatus) {
            try MessageTranslation.responseHead([H2Field("x", "y")], requestMethod: "GET", endStream: false)
        }
        #expect(throws: H2TranslationError.invalidStatus("20")) {
            try MessageTranslation.responseHead([H2Field(":status", "20")], requestMethod: "GET", endStream: false)
        }
        #expect(throws: H2TranslationError.unexpectedPseudoField(":path")) {
            try MessageTranslation.responseHead([H2Field(":status", "200"), H2Field(":path", "/")], requestMethod: "GET", endStream: false)
        }
        #expect(throws: H2TranslationError.invalidContentLength("5")) {
            try MessageTranslation.responseHead([H2Field(":status", "200"), H2Field("content-length", "4"), H2Field("content-length", "5")],
                                                requestMethod: "GET", endStream: false)
        }
    }

    @Test func connectionFieldsInAResponseDoNotReachTheClient() throws {
        let (head, _) = try MessageTranslation.responseHead(
            [H2Field(":status", "200"), H2Field("connection", "close"), H2Field("content-length", "1")],
            requestMethod: "GET", endStream: false)
        #expect(!head.headers.contains("connection"))
    }

    @Test func lastChunkCarriesTrailers() {
        var bytes: [UInt8] = []
        MessageTranslation.HTTP1Bytes.lastChunk(trailers: [H2Field("x-sum", "1"), H2Field("connection", "close")], into: &bytes)
        #expect(String(decoding: bytes, as: UTF8.self) == "0\r\nx-sum: 1\r\n\r\n")
    }
}

/// The HTTP/1.1 request the exchange writes upstream, read back as head, DATA and end for an HTTP/2 stream.
@Suite struct HTTP1RequestReaderTests {
    /// Runs the reader over `text` fed `step` bytes at a time; returns the head's method, the body, and whether it ended.
    private func read(_ text: String, step: Int = 1 << 20) throws -> (method: String?, body: [UInt8], done: Bool) {
        let all = Array(text.utf8)
        var reader = HTTP1RequestReader()
        var offset = 0, available = min(step, all.count)
        var method: String?, body: [UInt8] = []
        while true {
            let s = try Array(all[offset..<available]).withUnsafeBytes { try reader.next($0) }
            switch s {
            case .head(let head, _, let n): method = head.method; offset += n
            case .data(let n): body += all[offset..<(offset + n)]; offset += n
            case .skip(let n): offset += n
            case .end(let n): offset += n; return (method, body, true)
            case .needMore:
                if available == all.count { return (method, body, reader.isDone) }
                available = min(available + step, all.count)
            }
            if reader.isDone && offset == all.count { return (method, body, true) }
        }
    }

    @Test func headOnly() throws {
        let r = try read("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(r.method == "GET")
        #expect(r.body.isEmpty)
        #expect(r.done)
    }

    @Test(arguments: [1, 3, 1000])
    func contentLengthBodyInPieces(step: Int) throws {
        let r = try read("PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world", step: step)
        #expect(String(decoding: r.body, as: UTF8.self) == "hello world")
        #expect(r.done)
    }

    @Test(arguments: [1, 2, 1000])
    func chunkedBodyIsDecoded(step: Int) throws {
        let r = try read("POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", step: step)
        #expect(String(decoding: r.body, as: UTF8.self) == "hello world")
        #expect(r.done)
    }

    /// The trailer section the exchange wrote after the last chunk is read back, field by field, for the stream's
    /// trailer HEADERS frame; trickled in, the same.
    @Test(arguments: [1, 1000])
    func chunkedTrailersAreReadBack(step: Int) throws {
        let text = "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum:  abc \r\ngrpc-timeout: 1S\r\n\r\n"
        let all = Array(text.utf8)
        var reader = HTTP1RequestReader()
        var offset = 0, available = min(step, all.count)
        while !reader.isDone {
            switch try Array(all[offset..<available]).withUnsafeBytes({ try reader.next($0) }) {
            case .head(_, _, let n), .data(let n), .skip(let n), .end(let n): offset += n
            case .needMore: available = min(available + step, all.count)
            }
        }
        #expect(offset == all.count)
        #expect(reader.trailers == [HTTPField(name: "X-Checksum", value: "abc"), HTTPField(name: "grpc-timeout", value: "1S")])
        #expect(MessageTranslation.trailerFields(reader.trailers) == [H2Field("x-checksum", "abc"), H2Field("grpc-timeout", "1S")])
    }

    @Test func incompleteBodyIsNotDone() throws {
        let r = try read("PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\nshort")
        #expect(!r.done)
        #expect(r.body.count == 5)
    }
}

/// The byte paths the data path takes: a request head's bytes to a header list, a response header list to
/// HTTP/1.1 bytes, both without a String per field.
@Suite struct HeaderListTranslationTests {
    private func parsed(_ text: String) throws -> RequestHead {
        try HeadParser.parseRequest(Array(text.utf8))
    }

    @Test func requestListIsBuiltFromTheHeadBytes() throws {
        let head = try parsed("POST /p?q=1 HTTP/1.1\r\nHost: api.example\r\nX-Mixed-Case: Keep Me\r\nConnection: x-HOP, te\r\n"
                              + "X-Hop: 1\r\nTE: trailers\r\nContent-Length: 3\r\n\r\n")
        var list = H2HeaderList()
        MessageTranslation.requestHeaderList(head, into: &list)
        #expect(list.fields == [
            H2Field(":method", "POST"), H2Field(":scheme", "https"), H2Field(":authority", "api.example"), H2Field(":path", "/p?q=1"),
            H2Field("x-mixed-case", "Keep Me"), H2Field("content-length", "3"), H2Field("te", "trailers"),
        ])
        #expect(list.listSize == list.fields.reduce(0) { $0 + $1.name.utf8.count + $1.value.unicodeScalars.count + 32 })
        // Refilled for the next request: nothing of the first one stays.
        MessageTranslation.requestHeaderList(try parsed("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), into: &list)
        #expect(list.fields.map(\.name) == [":method", ":scheme", ":authority", ":path"])
    }

    @Test func aLargeListsBuffersAreNotKept() {
        var list = H2HeaderList()
        list.append("x-big", String(repeating: "v", count: 100_000))
        list.removeAll(keepingAtMost: 32 * 1024)
        #expect(list.isEmpty)
        #expect(list.bufferCapacity == 0)
        list.append("x-small", "v")
        let small = list.bufferCapacity
        list.removeAll(keepingAtMost: 32 * 1024)
        #expect(list.bufferCapacity == small)  // kept for the next head
    }

    @Test func obsTextValueBytesPassUnchanged() throws {
        var bytes = Array("GET / HTTP/1.1\r\nHost: h\r\nX-Latin: caf".utf8)
        bytes += [0xE9]
        bytes += Array("\r\n\r\n".utf8)
        let head = try HeadParser.parseRequest(bytes)
        var list = H2HeaderList()
        MessageTranslation.requestHeaderList(head, into: &list)
        var value: [UInt8] = []
        list.forEach { name, v in
            if String(decoding: name, as: UTF8.self) == "x-latin" { value = Array(v) }
            return true
        }
        #expect(value == Array("caf".utf8) + [0xE9])
    }

    @Test func responseListIsWrittenAsHTTP1Bytes() throws {
        var list = H2HeaderList()
        for (n, v) in [(":status", "200"), ("content-type", "text/plain"), ("content-length", "5"), ("connection", "close"),
                       ("content-length", "5"), ("set-cookie", "a=1")] {
            list.append(n, v)
        }
        var out: [UInt8] = []
        let framing = try MessageTranslation.writeResponseHead(list, requestMethod: "GET", endStream: false, into: &out)
        #expect(framing == .contentLength(5))
        #expect(String(decoding: out, as: UTF8.self)
                == "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\nset-cookie: a=1\r\n\r\n")
        out.removeAll()
        let chunked = try MessageTranslation.writeResponseHead(H2HeaderList([H2Field(":status", "404")]), requestMethod: "GET",
                                                               endStream: false, into: &out)
        #expect(chunked == .chunked)
        #expect(String(decoding: out, as: UTF8.self) == "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n")
    }

    @Test func malformedResponseListsWriteNothing() {
        for fields in [[H2Field(":status", "+20")], [H2Field(":status", "099")], [H2Field(":status", "200"), H2Field("content-length", "+5")],
                       [H2Field(":status", "200"), H2Field("content-length", "")], [H2Field(":status", "200"), H2Field(":method", "GET")],
                       [H2Field("content-length", "1")]] {
            var out: [UInt8] = []
            #expect(throws: H2TranslationError.self) {
                try MessageTranslation.writeResponseHead(H2HeaderList(fields), requestMethod: "GET", endStream: false, into: &out)
            }
            #expect(out.isEmpty)
        }
    }
}
