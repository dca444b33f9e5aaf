/// An incremental, strict decoder of the chunked transfer coding (RFC 9112 §7.1).
///
/// It never copies payload: each call looks at the bytes available and says how many to drop as framing, or
/// how many to pass on as data, so the caller can move data between buffers by reference and write the
/// framing anew in canonical form. Chunk extensions are validated and dropped. The trailer section (RFC 9112
/// §7.1.2) is checked line by line with the rules of a header section and held to its limits (`trailerLimits`:
/// `max_header_bytes` and the field count); each field line that may be forwarded is a `.trailerField` step, the
/// others (`TrailerFields.isDropped`, and those the head's `Connection` field names) are skipped.
public struct ChunkedDecoder: Sendable {
    public enum Step: Equatable, Sendable {
        /// Drop this many bytes of framing.
        case skip(Int)
        /// The next this-many bytes are payload.
        case data(Int)
        /// The next this-many bytes are one trailer field line, its CRLF included, valid as a header field line
        /// is: pass them on as they are, after the last chunk's `0\r\n` (`trailerFieldsPassed` says whether one
        /// went before).
        case trailerField(Int)
        /// Drop this many bytes; the body is complete.
        case end(Int)
        /// Nothing can be decided until more bytes arrive.
        case needMore
    }

    enum State: Sendable {
        case size
        case data(remaining: UInt64)
        case dataEnd
        case trailers
        case done
    }

    public static let maxLineLength = 4096

    var state: State = .size
    /// The trailer section so far: its bytes (CRLFs included) and field lines, held to `trailerLimits`.
    var trailerBytes = 0
    var trailerFields = 0
    /// Trailer field lines passed on (`.trailerField`) so far.
    public private(set) var trailerFieldsPassed = 0
    /// How far the current trailer line is known to hold no line end: a line trickled in is scanned once.
    var trailerScan = 0
    /// The limits of a head, which the trailer section is held to as well.
    let trailerLimits: HeadLimits
    /// The connection options of the message's head (`TrailerFields.connectionOptions`): fields of these names are
    /// dropped from the trailer section as from the head (RFC 9110 §7.6.1: "any header or trailer field(s)").
    public var connectionOptions: [[UInt8]] = []
    /// Whether chunk lines outside the grammar that other recipients read anyway are accepted: whitespace after
    /// the size or after an extension, an extension of any visible bytes after a ";". For responses, whose
    /// extensions are dropped and whose chunks are written anew: an upstream that pads its chunk sizes (nginx,
    /// curl and Python read those) still gets through. Requests keep the strict grammar (400).
    let toleratesOddChunkLines: Bool

    public init(trailerLimits: HeadLimits = HeadLimits()) {
        toleratesOddChunkLines = false
        self.trailerLimits = trailerLimits
    }

    /// The decoder of a response body from an upstream: see `toleratesOddChunkLines`.
    public static func forResponse(trailerLimits: HeadLimits = HeadLimits()) -> ChunkedDecoder {
        ChunkedDecoder(toleratesOddChunkLines: true, trailerLimits: trailerLimits)
    }

    private init(toleratesOddChunkLines: Bool, trailerLimits: HeadLimits) {
        self.toleratesOddChunkLines = toleratesOddChunkLines
        self.trailerLimits = trailerLimits
    }

    /// Payload bytes still owed by the current chunk, when the decoder is inside one. The caller may move up to
    /// this many bytes without looking at them, then report it with `consumedData`.
    public var dataRemaining: UInt64? {
        if case .data(let remaining) = state { return remaining }
        return nil
    }

    /// How many bytes the next step may need to see at once: a chunk line, or in the trailer section the room it
    /// has left (a trailer field may be as long as a header field).
    public var lineWindow: Int {
        if case .trailers = state { return max(0, trailerLimits.maxHeadBytes - trailerBytes) + 2 }
        return Self.maxLineLength + 2
    }

    public mutating func consumedData(_ n: Int) {
        guard case .data(let remaining) = state else { return }
        let left = remaining - UInt64(n)
        state = left == 0 ? .dataEnd : .data(remaining: left)
    }

    public var isDone: Bool {
        if case .done = state { return true }
        return false
    }

    public mutating func next(_ bytes: UnsafeRawBufferPointer) throws -> Step {
        switch state {
        case .done:
            return .end(0)
        case .data(let remaining):
            guard !bytes.isEmpty else { return .needMore }
            let n = Int(min(remaining, UInt64(bytes.count)))
            state = remaining == UInt64(n) ? .dataEnd : .data(remaining: remaining - UInt64(n))
            return .data(n)
        case .dataEnd:
            guard bytes.count >= 2 else { return .needMore }
            guard bytes[0] == 0x0D, bytes[1] == 0x0A else { throw HTTPParseError.invalidChunkTerminator }
            state = .size
            return .skip(2)
        case .size:
            guard let lineEnd = try findLineEnd(bytes, limit: Self.maxLineLength) else { return .needMore }
            let size = try parseSizeLine(bytes[0..<lineEnd])
            if size == 0 {
                state = .trailers
            } else {
                state = .data(remaining: size)
            }
            return .skip(lineEnd + 2)
        case .trailers:
            guard let lineEnd = try trailerLineEnd(bytes) else { return .needMore }
            if lineEnd == 0 {
                state = .done
                return .end(2)
            }
            trailerBytes += lineEnd + 2
            trailerFields += 1
            guard trailerFields <= trailerLimits.maxHeaderCount else {
                throw HTTPParseError.inTrailerSection(.tooManyHeaders(limit: trailerLimits.maxHeaderCount))
            }
            let nameEnd = try Self.checkFieldLine(UnsafeRawBufferPointer(rebasing: bytes[0..<lineEnd]))
            let name = UnsafeBufferPointer(rebasing: bytes.bindMemory(to: UInt8.self)[0..<nameEnd])
            if TrailerFields.isDropped(name) || TrailerFields.isNamed(name, by: connectionOptions) {
                return .skip(lineEnd + 2)
            }
            trailerFieldsPassed += 1
            return .trailerField(lineEnd + 2)
        }
    }

    /// The end of the trailer line at the start of `bytes` (the index of its CR), or nil while it has none; resumes
    /// at `trailerScan`. A bare CR or LF, or a line that would take the section over `max_header_bytes`, throws.
    private mutating func trailerLineEnd(_ bytes: UnsafeRawBufferPointer) throws -> Int? {
        let room = trailerLimits.maxHeadBytes - trailerBytes
        var i = trailerScan
        while i < bytes.count {
            let c = bytes[i]
            if c == 0x0D {
                guard i + 1 < bytes.count else {
                    trailerScan = i
                    return nil
                }
                guard bytes[i + 1] == 0x0A else { throw HTTPParseError.inTrailerSection(.bareCarriageReturn) }
                trailerScan = 0
                return i
            }
            if c == 0x0A { throw HTTPParseError.inTrailerSection(.bareLineFeed) }
            i += 1
            if i + 2 > room { throw HTTPParseError.trailerSectionTooLarge(limit: trailerLimits.maxHeadBytes) }
        }
        trailerScan = i
        return nil
    }

    /// Checks one field line (without its CRLF) as `HeadParser` checks a header's, in the same order: no
    /// obsolete line folding, a colon, no whitespace before it, a token for a name, field characters for a value.
    /// Returns where the name ends. The errors name the field, never its value.
    static func checkFieldLine(_ line: UnsafeRawBufferPointer) throws -> Int {
        if line[0] == 0x20 || line[0] == 0x09 { throw HTTPParseError.inTrailerSection(.obsoleteLineFolding) }
        guard let colon = line.firstIndex(of: 0x3A) else { throw HTTPParseError.inTrailerSection(.headerWithoutColon) }
        if colon > 0, line[colon - 1] == 0x20 || line[colon - 1] == 0x09 {
            throw HTTPParseError.inTrailerSection(.whitespaceBeforeColon)
        }
        guard colon > 0, line[0..<colon].allSatisfy(isTokenChar) else { throw HTTPParseError.inTrailerSection(.invalidFieldName) }
        guard line[(colon + 1)...].allSatisfy(isFieldValueChar) else {
            throw HTTPParseError.inTrailerSection(.invalidFieldValue(name: String(decoding: line[0..<colon], as: UTF8.self)))
        }
        return colon
    }

    /// Index of the CR of the first CRLF, nil if none yet; a bare CR or LF is an error.
    private func findLineEnd(_ bytes: UnsafeRawBufferPointer, limit: Int) throws -> Int? {
        var i = 0
        while i < bytes.count {
            let c = bytes[i]
            if c == 0x0D {
                guard i + 1 < bytes.count else { return nil }
                guard bytes[i + 1] == 0x0A else { throw HTTPParseError.invalidChunkSize }
                return i
            }
            if c == 0x0A { throw HTTPParseError.invalidChunkSize }
            i += 1
            if i > limit { throw HTTPParseError.chunkLineTooLong }
        }
        return nil
    }

    /// chunk-size [ chunk-ext ], where chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ), ext-name a
    /// token and ext-val a token or a quoted-string (RFC 9112 §7.1.1). Nothing else is accepted: not a bare ";",
    /// not whitespace after the size (or an extension) that no ";" follows.
    private func parseSizeLine(_ line: Slice<UnsafeRawBufferPointer>) throws -> UInt64 {
        var i = line.startIndex
        let end = line.endIndex
        var size: UInt64 = 0
        var digits = 0
        while i < end, let v = hexValue(line[i]) {
            if digits >= 16 { throw HTTPParseError.chunkSizeTooLarge }
            size = size << 4 | UInt64(v)
            digits += 1
            i += 1
        }
        guard digits > 0 else { throw HTTPParseError.invalidChunkSize }
        if size > UInt64(Int64.max) { throw HTTPParseError.chunkSizeTooLarge }
        if i == end { return size }
        if toleratesOddChunkLines {
            i = skipWhitespace(line, from: i)
            if i == end { return size }
            guard line[i] == 0x3B else { throw HTTPParseError.invalidChunkSize }
            for c in line[i...] where !(c == 0x09 || (c >= 0x20 && c < 0x7F)) { throw HTTPParseError.invalidChunkExtension }
            return size
        }
        // Extensions: validated for shape, then dropped.
        while i < end {
            i = skipWhitespace(line, from: i)
            guard i < end else { throw HTTPParseError.invalidChunkSize }  // whitespace with no extension after it
            guard line[i] == 0x3B else { throw HTTPParseError.invalidChunkSize }
            i = skipWhitespace(line, from: i + 1)
            let nameStart = i
            while i < end && isTokenChar(line[i]) { i += 1 }
            guard i > nameStart else { throw HTTPParseError.invalidChunkExtension }
            let afterName = skipWhitespace(line, from: i)
            if afterName < end && line[afterName] == 0x3D {
                i = skipWhitespace(line, from: afterName + 1)
                guard i < end else { throw HTTPParseError.invalidChunkExtension }
                if line[i] == 0x22 {
                    i = try quotedStringEnd(line, from: i)
                } else {
                    let valueStart = i
                    while i < end && isTokenChar(line[i]) { i += 1 }
                    guard i > valueStart else { throw HTTPParseError.invalidChunkExtension }
                }
            }
        }
        return size
    }

    @inline(__always) private func skipWhitespace(_ line: Slice<UnsafeRawBufferPointer>, from start: Int) -> Int {
        var i = start
        while i < line.endIndex && (line[i] == 0x20 || line[i] == 0x09) { i += 1 }
        return i
    }

    /// The index after the quoted-string that starts at `start` (a DQUOTE): qdtext and quoted-pairs up to the
    /// closing DQUOTE (RFC 9110 §5.6.4).
    private func quotedStringEnd(_ line: Slice<UnsafeRawBufferPointer>, from start: Int) throws -> Int {
        var i = start + 1
        while i < line.endIndex {
            let c = line[i]
            if c == 0x22 { return i + 1 }
            if c == 0x5C {
                guard i + 1 < line.endIndex, isFieldValueChar(line[i + 1]) else { throw HTTPParseError.invalidChunkExtension }
                i += 2
                continue
            }
            guard isFieldValueChar(c) else { throw HTTPParseError.invalidChunkExtension }
            i += 1
        }
        throw HTTPParseError.invalidChunkExtension
    }

    @inline(__always) private func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }
}

/// The canonical chunk framing the proxy writes: size line before data, CRLF after, and the last chunk.
public enum ChunkedEncoder {
    public static func chunkHeader(size: Int) -> [UInt8] {
        Array(String(size, radix: 16).utf8) + [0x0D, 0x0A]
    }

    public static let chunkTrailer: [UInt8] = [0x0D, 0x0A]
    public static let lastChunk: [UInt8] = Array("0\r\n\r\n".utf8)
    /// The last chunk's size line, when trailer fields follow it; `chunkTrailer` (CRLF) then ends the section.
    public static let lastChunkLine: [UInt8] = Array("0\r\n".utf8)
}
