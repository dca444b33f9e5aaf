import Testing
@testable import HTTP1

/// Runs the decoder over `input` fed in pieces of `step` bytes, the way bytes arrive from a socket;
/// returns the payload and whether the body ended.
private func decode(_ input: String, step: Int = 1_000_000, decoder: ChunkedDecoder = ChunkedDecoder()) throws -> (payload: [UInt8], done: Bool, consumed: Int, trailers: [String]) {
    let all = Array(input.utf8)
    var decoder = decoder
    var payload: [UInt8] = []
    var trailers: [String] = []
    var offset = 0
    var available = min(step, all.count)
    while true {
        let window = Array(all[offset..<available])
        let result = try window.withUnsafeBytes { try decoder.next($0) }
        switch result {
        case .skip(let n): offset += n
        case .data(let n):
            payload += all[offset..<(offset + n)]
            offset += n
        case .trailerField(let n):
            trailers.append(String(decoding: all[offset..<(offset + n)], as: UTF8.self))
            offset += n
        case .end(let n):
            return (payload, true, offset + n, trailers)
        case .needMore:
            if available == all.count { return (payload, false, offset, trailers) }
            available = min(available + step, all.count)
        }
        if available < offset { available = offset }
    }
}

@Suite struct ChunkedDecoderTests {
    @Test func decodesChunksAndTheLastChunk() throws {
        let r = try decode("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT")
        #expect(String(decoding: r.payload, as: UTF8.self) == "hello world")
        #expect(r.done)
        #expect(r.consumed == "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".utf8.count)
    }

    @Test func decodesTheSameWhenBytesArriveOneAtATime() throws {
        let r = try decode("5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n", step: 1)
        #expect(String(decoding: r.payload, as: UTF8.self) == "hello0123456789")
        #expect(r.done)
    }

    @Test func acceptsUpperAndLowerHex() throws {
        let r = try decode("a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n")
        #expect(r.payload.count == 20)
    }

    @Test func waitsForAnIncompleteBody() throws {
        let r = try decode("5\r\nhel")
        #expect(!r.done)
        #expect(r.payload.count == 3)
    }

    @Test(arguments: [
        "x\r\nhello\r\n0\r\n\r\n",            // not hex
        "\r\nhello\r\n0\r\n\r\n",             // empty size
        "-5\r\nhello\r\n0\r\n\r\n",           // sign
        "5 5\r\nhello\r\n0\r\n\r\n",          // space inside the size
        "5\nhello\r\n0\r\n\r\n",              // bare LF
        "5\r\r\nhello\r\n0\r\n\r\n",          // bare CR
    ])
    func rejectsInvalidSizeLines(_ input: String) {
        #expect(throws: HTTPParseError.self) { try decode(input) }
    }

    @Test func rejectsAChunkSizeThatOverflows() {
        #expect(throws: HTTPParseError.chunkSizeTooLarge) { try decode("10000000000000000\r\nx\r\n0\r\n\r\n") }
        #expect(throws: HTTPParseError.chunkSizeTooLarge) { try decode("ffffffffffffffff\r\nx\r\n0\r\n\r\n") }
    }

    @Test func rejectsDataNotFollowedByCRLF() {
        #expect(throws: HTTPParseError.invalidChunkTerminator) { try decode("5\r\nhelloXX0\r\n\r\n") }
    }

    @Test func rejectsControlCharactersInExtensions() {
        #expect(throws: HTTPParseError.invalidChunkExtension) { try decode("5;a=\u{1}\r\nhello\r\n0\r\n\r\n") }
    }

    /// chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ), ext-name a token, ext-val a token or a
    /// quoted-string (RFC 9112 §7.1.1). Lines outside it are refused, not cleaned and passed on.
    @Test(arguments: [
        "5;\r\nhello\r\n0\r\n\r\n",               // a bare ";"
        "5 ;\r\nhello\r\n0\r\n\r\n",
        "5;a=1;\r\nhello\r\n0\r\n\r\n",           // a trailing ";"
        "5;a@b\r\nhello\r\n0\r\n\r\n",            // a name that is not a token
        "5;\"a\"\r\nhello\r\n0\r\n\r\n",
        "5;a b\r\nhello\r\n0\r\n\r\n",
        "5;=1\r\nhello\r\n0\r\n\r\n",             // no name
        "5;a=\r\nhello\r\n0\r\n\r\n",             // no value after "="
        "5;a=b c\r\nhello\r\n0\r\n\r\n",
        "5;a=\"b\r\nhello\r\n0\r\n\r\n",          // an unterminated quoted-string
        "5 \r\nhello\r\n0\r\n\r\n",               // whitespace after the size, no extension
        "5\t\r\nhello\r\n0\r\n\r\n",
        "5;a \r\nhello\r\n0\r\n\r\n",             // whitespace after an extension, at the end
        "0 \r\n\r\n",
    ])
    func rejectsChunkLinesOutsideTheGrammar(_ input: String) {
        #expect(throws: HTTPParseError.self) { try decode(input) }
    }

    @Test(arguments: [
        "5;a\r\nhello\r\n0\r\n\r\n",
        "5;a=1\r\nhello\r\n0\r\n\r\n",
        "5 ; a = 1\r\nhello\r\n0\r\n\r\n",        // BWS around ";" and "="
        "5;a=1;b;c=\"x y;\\\"z\"\r\nhello\r\n0\r\n\r\n",
        "5\t;\ta\r\nhello\r\n0;last=1\r\n\r\n",
    ])
    func acceptsChunkExtensionsInTheGrammar(_ input: String) throws {
        let r = try decode(input)
        #expect(String(decoding: r.payload, as: UTF8.self) == "hello")
        #expect(r.done)
    }

    /// A response's decoder reads what nginx, curl and Python read from an upstream (its extensions are dropped,
    /// its chunks written anew): whitespace after the size or an extension, a bare ";". Control bytes, a line
    /// without a size and a missing ";" before an extension are refused as from a client.
    @Test(arguments: [
        "5 \r\nhello\r\n0\r\n\r\n",
        "5\t\r\nhello\r\n0 \r\n\r\n",
        "5;a \r\nhello\r\n0\r\n\r\n",
        "5;\r\nhello\r\n0\r\n\r\n",
        "5;a=b c\r\nhello\r\n0\r\n\r\n",
    ])
    func aResponseDecoderReadsPaddedChunkLines(_ input: String) throws {
        #expect(throws: HTTPParseError.self) { try decode(input) }
        let r = try decode(input, step: 1, decoder: .forResponse())
        #expect(String(decoding: r.payload, as: UTF8.self) == "hello")
        #expect(r.done)
    }

    @Test(arguments: ["5 x\r\nhello\r\n0\r\n\r\n", " 5\r\nhello\r\n0\r\n\r\n", "5;a\u{1}\r\nhello\r\n0\r\n\r\n", ";a\r\nhello\r\n0\r\n\r\n"])
    func aResponseDecoderStillRefusesLinesNoneReads(_ input: String) {
        #expect(throws: HTTPParseError.self) { try decode(input, decoder: .forResponse()) }
    }

    @Test func rejectsAnEndlessSizeLine() {
        let long = "5;" + String(repeating: "a", count: 5000) + "\r\nhello\r\n0\r\n\r\n"
        #expect(throws: HTTPParseError.chunkLineTooLong) { try decode(long) }
    }

    /// Trailer field lines are passed on as received (CRLF included); those that cannot be trailers are skipped.
    @Test(arguments: [1, 7, 1000])
    func passesTrailerFieldsAndSkipsThoseThatCannotBeTrailers(step: Int) throws {
        let r = try decode("5\r\nhello\r\n0\r\nx-checksum: abc\r\nContent-Length: 5\r\nHOST: evil\r\nProxy-Authorization: Basic eA==\r\n"
                           + "Set-Cookie: a=b\r\ngrpc-status:0\r\nTransfer-Encoding: chunked\r\n\r\nNEXT", step: step)
        #expect(r.done)
        #expect(r.trailers == ["x-checksum: abc\r\n", "grpc-status:0\r\n"])
        #expect(r.consumed == "5\r\nhello\r\n0\r\nx-checksum: abc\r\nContent-Length: 5\r\nHOST: evil\r\nProxy-Authorization: Basic eA==\r\n".utf8.count
                + "Set-Cookie: a=b\r\ngrpc-status:0\r\nTransfer-Encoding: chunked\r\n\r\n".utf8.count)  // "NEXT" stays
    }

    /// The fields a request head never carries upstream because frameworks read them as the path are dropped too.
    @Test(arguments: ["X-Original-URL", "x-rewrite-url", "X-ORIGINAL-URI"])
    func pathOverrideFieldsAreDropped(_ name: String) throws {
        #expect(TrailerFields.isDropped(name))
        #expect(try decode("0\r\n\(name): /admin\r\nx-ok: 1\r\n\r\n").trailers == ["x-ok: 1\r\n"])
    }

    /// RFC 9110 §7.6.1: a field the head's Connection field names is removed from the trailer section as well.
    @Test func fieldsTheConnectionFieldNamesAreDropped() throws {
        var headers = HTTPHeaders()
        headers.add("Connection", "keep-alive, X-Hop")
        headers.add("connection", "x-other")
        var decoder = ChunkedDecoder()
        decoder.connectionOptions = TrailerFields.connectionOptions(headers)
        for step in [1, 1000] {
            let r = try decode("0\r\nx-hop: 1\r\nX-HOP: 2\r\nx-hopper: 3\r\nX-Other: 4\r\nx-ok: 5\r\n\r\n", step: step, decoder: decoder)
            #expect(r.trailers == ["x-hopper: 3\r\n", "x-ok: 5\r\n"])
        }
        #expect(TrailerFields.connectionOptions(HTTPHeaders()).isEmpty)
    }

    @Test func aDroppedFieldIsNotCountedAsPassed() throws {
        var decoder = ChunkedDecoder()
        let bytes = Array("0\r\nContent-Length: 1\r\nx-a: 1\r\n\r\n".utf8)
        var offset = 0
        var steps: [ChunkedDecoder.Step] = []
        while !decoder.isDone {
            let step = try Array(bytes[offset...]).withUnsafeBytes { try decoder.next($0) }
            steps.append(step)
            switch step {
            case .skip(let n), .trailerField(let n), .end(let n), .data(let n): offset += n
            case .needMore: Issue.record("needs more"); return
            }
        }
        #expect(steps == [.skip(3), .skip(19), .trailerField(8), .end(2)])
        #expect(decoder.trailerFieldsPassed == 1)
    }

    /// A trailer field line is held to the rules of a header field line; the error names the fault, never the value.
    @Test(arguments: [
        ("0\r\nno colon\r\n\r\n", HTTPParseError.inTrailerSection(.headerWithoutColon)),
        ("0\r\nx-a: 1\r\n folded\r\n\r\n", .inTrailerSection(.obsoleteLineFolding)),
        ("0\r\nx-a : 1\r\n\r\n", .inTrailerSection(.whitespaceBeforeColon)),
        ("0\r\nx a: 1\r\n\r\n", .inTrailerSection(.invalidFieldName)),
        ("0\r\n: 1\r\n\r\n", .inTrailerSection(.invalidFieldName)),
        ("0\r\n:path: /x\r\n\r\n", .inTrailerSection(.invalidFieldName)),
        ("0\r\nx-a: zz\u{0}\r\n\r\n", .inTrailerSection(.invalidFieldValue(name: "x-a"))),
        ("0\r\nx-a: zz\u{7F}\r\n\r\n", .inTrailerSection(.invalidFieldValue(name: "x-a"))),
        ("0\r\nx-a: zz\rq\r\n\r\n", .inTrailerSection(.bareCarriageReturn)),
        ("0\r\nx-a: zz\n\r\n", .inTrailerSection(.bareLineFeed)),
        ("0\r\nContent-Length: zz\u{0}\r\n\r\n", .inTrailerSection(.invalidFieldValue(name: "Content-Length"))),  // checked even if dropped
    ])
    func rejectsMalformedTrailers(_ input: String, _ expected: HTTPParseError) {
        #expect(throws: expected) { try decode(input) }
        #expect(throws: expected) { try decode(input, step: 1, decoder: .forResponse()) }
        #expect(!expected.description.contains("zz"))
    }

    /// The trailer section is held to a head's limits: its bytes to max_header_bytes, its fields to the count. A
    /// field may be longer than a chunk line.
    @Test func theTrailerSectionIsHeldToTheHeadLimits() throws {
        let limits = HeadLimits(maxHeadBytes: 100, maxHeaderCount: 3)
        let long = "x-a: " + String(repeating: "v", count: 90)  // 97 bytes with its CRLF
        #expect(try decode("0\r\n\(long)\r\n\r\n", decoder: ChunkedDecoder(trailerLimits: limits)).trailers == [long + "\r\n"])
        #expect(throws: HTTPParseError.trailerSectionTooLarge(limit: 100)) {
            try decode("0\r\n\(long)v\r\nx: 1\r\n\r\n", decoder: ChunkedDecoder(trailerLimits: limits))
        }
        #expect(throws: HTTPParseError.trailerSectionTooLarge(limit: 100)) {
            try decode("0\r\n\(long)\r\nx: 1\r\n\r\n", step: 1, decoder: .forResponse(trailerLimits: limits))
        }
        #expect(throws: HTTPParseError.inTrailerSection(.tooManyHeaders(limit: 3))) {
            try decode("0\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\n\r\n", decoder: ChunkedDecoder(trailerLimits: limits))
        }
        let field = "x-digest: " + String(repeating: "d", count: 6000)
        #expect(try decode("0\r\n\(field)\r\n\r\n").trailers == [field + "\r\n"])
        #expect(ChunkedDecoder().lineWindow == ChunkedDecoder.maxLineLength + 2)
        #expect(HTTPParseError.trailerSectionTooLarge(limit: 100).description == "the trailer section exceeds 100 bytes")
    }

    /// A trailer line trickled in one byte at a time is scanned once, not from its start at every byte.
    @Test func aTrickledTrailerLineIsScannedOnce() throws {
        var decoder = ChunkedDecoder()
        var bytes = Array("0\r\n".utf8)
        _ = try bytes.withUnsafeBytes { try decoder.next($0) }
        bytes = []
        for byte in Array(("x-a: " + String(repeating: "v", count: 2000)).utf8) {
            bytes.append(byte)
            #expect(try bytes.withUnsafeBytes { try decoder.next($0) } == .needMore)
        }
        #expect(decoder.trailerScan == bytes.count)
        bytes += [0x0D, 0x0A]
        #expect(try bytes.withUnsafeBytes { try decoder.next($0) } == .trailerField(bytes.count))
        #expect(decoder.trailerScan == 0)
    }

    @Test func movesDataWithoutLookingAtIt() throws {
        var decoder = ChunkedDecoder()
        let head = Array("10\r\n".utf8)
        #expect(try head.withUnsafeBytes { try decoder.next($0) } == .skip(4))
        #expect(decoder.dataRemaining == 16)
        decoder.consumedData(10)
        #expect(decoder.dataRemaining == 6)
        decoder.consumedData(6)
        #expect(decoder.dataRemaining == nil)
        let rest = Array("\r\n0\r\n\r\n".utf8)
        #expect(try rest.withUnsafeBytes { try decoder.next($0) } == .skip(2))
    }

    @Test func encoderWritesCanonicalFraming() {
        #expect(ChunkedEncoder.chunkHeader(size: 255) == Array("ff\r\n".utf8))
        #expect(ChunkedEncoder.lastChunk == Array("0\r\n\r\n".utf8))
    }
}
