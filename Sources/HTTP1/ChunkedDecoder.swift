/// An incremental, strict decoder of the chunked transfer coding (RFC 9112 §7.1).
///
/// It never copies payload: each call looks at the bytes available and says how many to drop as framing, or
/// how many to pass on as data, so the caller can move data between buffers by reference and write the
/// framing anew in canonical form. Chunk extensions are validated and dropped; trailers are validated and dropped.
public struct ChunkedDecoder: Sendable {
    public enum Step: Equatable, Sendable {
        /// Drop this many bytes of framing.
        case skip(Int)
        /// The next this-many bytes are payload.
        case data(Int)
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
    public static let maxTrailerBytes = 16 * 1024

    var state: State = .size
    var trailerBytes = 0

    public init() {}

    /// Payload bytes still owed by the current chunk, when the decoder is inside one. The caller may move up to
    /// this many bytes without looking at them, then report it with `consumedData`.
    public var dataRemaining: UInt64? {
        if case .data(let remaining) = state { return remaining }
        return nil
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
            guard let lineEnd = try findLineEnd(bytes, limit: Self.maxLineLength) else { return .needMore }
            if lineEnd == 0 {
                state = .done
                return .end(2)
            }
            trailerBytes += lineEnd + 2
            guard trailerBytes <= Self.maxTrailerBytes else { throw HTTPParseError.invalidTrailer }
            let line = bytes[0..<lineEnd]
            guard let colon = line.firstIndex(of: 0x3A), colon > 0,
                  line[0..<colon].allSatisfy(isTokenChar),
                  line[(colon + 1)...].allSatisfy(isFieldValueChar) else { throw HTTPParseError.invalidTrailer }
            return .skip(lineEnd + 2)
        }
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

    /// chunk-size [ chunk-ext ], where chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ).
    private func parseSizeLine(_ line: Slice<UnsafeRawBufferPointer>) throws -> UInt64 {
        var i = line.startIndex
        var size: UInt64 = 0
        var digits = 0
        while i < line.endIndex, let v = hexValue(line[i]) {
            if digits >= 16 { throw HTTPParseError.chunkSizeTooLarge }
            size = size << 4 | UInt64(v)
            digits += 1
            i += 1
        }
        guard digits > 0 else { throw HTTPParseError.invalidChunkSize }
        if size > UInt64(Int64.max) { throw HTTPParseError.chunkSizeTooLarge }
        // Extensions: validated for shape, then ignored.
        var rest = line[i...]
        while let f = rest.first, f == 0x20 || f == 0x09 { rest = rest.dropFirst() }
        if rest.isEmpty { return size }
        guard rest.first == 0x3B else { throw HTTPParseError.invalidChunkSize }
        for c in rest where !(c == 0x09 || (c >= 0x20 && c < 0x7F)) {
            throw HTTPParseError.invalidChunkExtension
        }
        return size
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
}
