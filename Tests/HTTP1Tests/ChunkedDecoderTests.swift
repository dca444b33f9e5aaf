import Testing
@testable import HTTP1

/// Runs the decoder over `input` fed in pieces of `step` bytes, the way bytes arrive from a socket;
/// returns the payload and whether the body ended.
private func decode(_ input: String, step: Int = 1_000_000, decoder: ChunkedDecoder = ChunkedDecoder()) throws -> (payload: [UInt8], done: Bool, consumed: Int) {
    let all = Array(input.utf8)
    var decoder = decoder
    var payload: [UInt8] = []
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
        case .end(let n):
            return (payload, true, offset + n)
        case .needMore:
            if available == all.count { return (payload, false, offset) }
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

    @Test func rejectsMalformedTrailers() {
        #expect(throws: HTTPParseError.invalidTrailer) { try decode("0\r\nno colon\r\n\r\n") }
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
