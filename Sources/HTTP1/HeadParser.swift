#if canImport(Glibc)
import Glibc
#endif

/// Strict HTTP/1.1 head parsing (RFC 9112 §2-§5) over raw bytes.
///
/// Every line must end in CRLF; a bare CR or a bare LF is an error, as are obsolete line folding, a header
/// line without a colon, whitespace before the colon, and control characters in names or values.
public enum HeadParser {
    /// Where a scan for the end of a head stopped, so that the next call (with more bytes behind the same
    /// start) goes on from there instead of starting over: a head trickled in one byte at a time then costs
    /// linear time, not quadratic.
    public struct Scan: Sendable, Equatable {
        /// The first byte not yet examined.
        var next = 0
        /// Where the current line starts.
        var lineStart = 0
        var sawStartLine = false

        public init() {}
    }

    /// The length of the head, through the empty line that ends it, or nil if `bytes` does not hold it all yet.
    /// Empty lines before the start line (allowed by RFC 9112 §2.2) count as part of the head.
    /// Throws once the head is known to be malformed or longer than `limit`.
    public static func headLength(_ bytes: UnsafeRawBufferPointer, limit: Int) throws -> Int? {
        var scan = Scan()
        return try headLength(bytes, limit: limit, resuming: &scan)
    }

    /// As `headLength(_:limit:)`, going on from `scan`, which it updates when it returns nil.
    public static func headLength(_ bytes: UnsafeRawBufferPointer, limit: Int, resuming scan: inout Scan) throws -> Int? {
        let n = bytes.count
        var i = scan.next
        var lineStart = scan.lineStart
        var sawStartLine = scan.sawStartLine
        defer {
            scan.next = i
            scan.lineStart = lineStart
            scan.sawStartLine = sawStartLine
        }
        while i < n {
            // Skip the run of ordinary bytes up to the next CR or LF with memchr (a line at a time), then look at
            // that byte as one would walking byte by byte.
            let special = nextLineByte(bytes, from: i)
            if special > i {
                let firstTooFar = max(i, limit)  // an ordinary byte at or past `limit` makes the head too large
                if firstTooFar < special {
                    i = firstTooFar + 1
                    throw HTTPParseError.headTooLarge(limit: limit)
                }
                i = special
                if i == n { break }
            }
            let c = bytes[i]
            if c == 0x0D {
                guard i + 1 < n else { break }  // CR at the end: wait for more, and look at it again then
                guard bytes[i + 1] == 0x0A else { throw HTTPParseError.bareCarriageReturn }
                let lineLength = i - lineStart
                if lineLength == 0 {
                    if sawStartLine {
                        let end = i + 2
                        if end > limit { throw HTTPParseError.headTooLarge(limit: limit) }
                        return end
                    }
                } else {
                    sawStartLine = true
                }
                i += 2
                lineStart = i
                continue
            }
            throw HTTPParseError.bareLineFeed  // c == 0x0A
        }
        if n > limit { throw HTTPParseError.headTooLarge(limit: limit) }
        return nil
    }

    /// The index of the first CR or LF in `bytes` at or after `start`, or `bytes.count` when there is none.
    /// Eight bytes at a time: a word with neither is skipped whole; otherwise its lowest flagged byte is exact
    /// (a borrow only runs upwards), and that is the answer.
    @inline(__always)
    static func nextLineByte(_ bytes: UnsafeRawBufferPointer, from start: Int) -> Int {
        let n = bytes.count
        var i = start
        while i + 8 <= n {
            let w = bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            let cr = w ^ 0x0D0D_0D0D_0D0D_0D0D
            let lf = w ^ 0x0A0A_0A0A_0A0A_0A0A
            let flagged = (((cr &- 0x0101_0101_0101_0101) & ~cr) | ((lf &- 0x0101_0101_0101_0101) & ~lf)) & 0x8080_8080_8080_8080
            if flagged != 0 { return i + flagged.trailingZeroBitCount >> 3 }
            i += 8
        }
        while i < n {
            let c = bytes[i]
            if c == 0x0D || c == 0x0A { return i }
            i += 1
        }
        return n
    }

    public static func parseRequest(_ bytes: UnsafeRawBufferPointer, limits: HeadLimits = HeadLimits()) throws -> RequestHead {
        var head = RequestHead()
        try parseRequest(bytes, into: &head, limits: limits)
        return head
    }

    /// Parses a complete request head into `head`, reusing its buffers: the head's bytes are copied into them
    /// once, and the target and every field are offsets over that copy. A head whose buffers are not shared and
    /// are large enough is refilled without allocating. On a throw, `head` holds nothing usable.
    public static func parseRequest(_ bytes: UnsafeRawBufferPointer, into head: inout RequestHead, limits: HeadLimits = HeadLimits()) throws {
        var lines = try Lines(bytes, limits: limits)
        head.headers.removeAllKeepingCapacity()
        guard let start = lines.next() else { throw HTTPParseError.invalidRequestLine }
        // request-line = method SP request-target SP HTTP-version
        guard let sp1 = firstSpace(start) else { throw HTTPParseError.invalidRequestLine }
        let methodBytes = start[start.startIndex..<sp1]
        let rest = start[(sp1 + 1)...]
        guard let sp2 = firstSpace(rest) else { throw HTTPParseError.invalidRequestLine }
        let targetBytes = rest[rest.startIndex..<sp2]
        let versionBytes = rest[(sp2 + 1)...]
        guard !methodBytes.isEmpty, methodBytes.allSatisfy(isTokenChar) else { throw HTTPParseError.invalidMethod }
        guard methodBytes.count <= maxMethodLength else { throw HTTPParseError.methodTooLong(limit: maxMethodLength) }
        guard !targetBytes.isEmpty else { throw HTTPParseError.invalidRequestLine }
        try checkTargetCharacters(targetBytes)
        let version = try parseVersion(versionBytes)
        head.headers.storage.append(contentsOf: bytes)
        try parseFields(&lines, into: &head.headers, limits: limits)
        head.method = method(methodBytes)
        head.version = version
        head.targetStart = UInt32(targetBytes.startIndex)
        head.targetEnd = UInt32(targetBytes.endIndex)
    }

    /// A request target is visible ASCII only (RFC 9112 §3.2, RFC 3986): a space ends it, and a control character
    /// or a byte beyond ASCII has no place in it (a client percent-encodes them). `explain` checks a URL by this
    /// too, so that it never describes a request the listener refuses.
    @inline(__always)
    public static func checkTargetCharacters<Bytes: Collection>(_ bytes: Bytes) throws where Bytes.Element == UInt8 {
        guard bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw HTTPParseError.invalidTarget("only visible ASCII characters are allowed")
        }
    }

    /// The longest method accepted: registered methods have at most 17 letters; a longer one is not a method.
    public static let maxMethodLength = 64

    /// What is too large about a request head that did not end within `limit` bytes (`bytes` holds its first
    /// bytes, at least `limit` of them or all that came): a method that is not one (400), a request line longer
    /// than the limit (414), or else the header section (431).
    public static func oversizedRequestError(_ bytes: UnsafeRawBufferPointer, limit: Int) -> HTTPParseError {
        var i = 0
        while i + 1 < bytes.count && bytes[i] == 0x0D && bytes[i + 1] == 0x0A { i += 2 }  // empty lines first
        let lineStart = i
        while i < bytes.count && i - lineStart <= maxMethodLength && bytes[i] != 0x20 {
            guard isTokenChar(bytes[i]) else { return .invalidMethod }
            i += 1
        }
        if i == bytes.count { return .headTooLarge(limit: limit) }  // not enough to tell
        guard bytes[i] == 0x20, i > lineStart else { return .methodTooLong(limit: maxMethodLength) }
        while i < bytes.count && bytes[i] != 0x0D && bytes[i] != 0x0A { i += 1 }
        if i == bytes.count && i >= limit { return .requestLineTooLong(limit: limit) }
        return .headTooLarge(limit: limit)
    }

    /// The index (in the base buffer) of the first SP in `line`, found with memchr.
    @inline(__always)
    private static func firstSpace(_ line: Slice<UnsafeRawBufferPointer>) -> Int? {
        guard let base = line.base.baseAddress, line.startIndex < line.endIndex,
              let found = memchr(base + line.startIndex, 0x20, line.endIndex - line.startIndex) else { return nil }
        return UnsafeRawPointer(found) - base
    }

    /// The method as a String: the common ones are literals (nothing to allocate or copy).
    private static func method(_ bytes: Slice<UnsafeRawBufferPointer>) -> String {
        let b = bytes.base, s = bytes.startIndex
        switch bytes.count {
        case 3:
            if b[s] == 0x47 && b[s + 1] == 0x45 && b[s + 2] == 0x54 { return "GET" }
            if b[s] == 0x50 && b[s + 1] == 0x55 && b[s + 2] == 0x54 { return "PUT" }
        case 4:
            if b[s] == 0x50 && b[s + 1] == 0x4F && b[s + 2] == 0x53 && b[s + 3] == 0x54 { return "POST" }
            if b[s] == 0x48 && b[s + 1] == 0x45 && b[s + 2] == 0x41 && b[s + 3] == 0x44 { return "HEAD" }
        default:
            break
        }
        return ascii(bytes)
    }

    public static func parseResponse(_ bytes: UnsafeRawBufferPointer, limits: HeadLimits = HeadLimits()) throws -> ResponseHead {
        var head = ResponseHead()
        try parseResponse(bytes, into: &head, limits: limits)
        return head
    }

    /// Parses a complete response head into `head`, reusing its buffers (see `parseRequest(_:into:limits:)`).
    public static func parseResponse(_ bytes: UnsafeRawBufferPointer, into head: inout ResponseHead, limits: HeadLimits = HeadLimits()) throws {
        var lines = try Lines(bytes, limits: limits)
        head.headers.removeAllKeepingCapacity()
        guard let start = lines.next() else { throw HTTPParseError.invalidStatusLine }
        // status-line = HTTP-version SP status-code SP [ reason-phrase ]
        guard start.count >= 12, let sp1 = firstSpace(start) else { throw HTTPParseError.invalidStatusLine }
        let version: HTTPVersion
        do {
            version = try parseVersion(start[start.startIndex..<sp1])
        } catch HTTPParseError.invalidRequestLine {
            throw HTTPParseError.invalidStatusLine  // a response has no request line
        }
        let codeStart = sp1 + 1
        guard codeStart + 3 <= start.endIndex else { throw HTTPParseError.invalidStatusLine }
        let code = start[codeStart..<(codeStart + 3)]
        guard code.allSatisfy(isDigit) else { throw HTTPParseError.invalidStatusLine }
        let status = code.reduce(0) { $0 * 10 + Int($1 - 0x30) }
        guard status >= 100 else { throw HTTPParseError.invalidStatusLine }
        var reasonStart = start.endIndex
        if codeStart + 3 < start.endIndex {
            guard start[codeStart + 3] == 0x20 else { throw HTTPParseError.invalidStatusLine }
            let reasonBytes = start[(codeStart + 4)...]
            guard reasonBytes.allSatisfy(isFieldValueChar) else { throw HTTPParseError.invalidStatusLine }
            reasonStart = reasonBytes.startIndex
        }
        head.headers.storage.append(contentsOf: bytes)
        try parseFields(&lines, into: &head.headers, limits: limits)
        head.version = version
        head.status = status
        head.reasonStart = UInt32(reasonStart)
        head.reasonEnd = UInt32(start.endIndex)
    }

    private static func parseVersion(_ bytes: Slice<UnsafeRawBufferPointer>) throws -> HTTPVersion {
        // "HTTP/1." compared byte by byte in place, then the minor version.
        if bytes.count == 8 {
            let b = bytes.base, s = bytes.startIndex
            if b[s] == 0x48 && b[s + 1] == 0x54 && b[s + 2] == 0x54 && b[s + 3] == 0x50 && b[s + 4] == 0x2F
                && b[s + 5] == 0x31 && b[s + 6] == 0x2E {
                if b[s + 7] == 0x31 { return .http11 }
                if b[s + 7] == 0x30 { return .http10 }
            }
        }
        let text = ascii(bytes.prefix(16))
        if bytes.count == 8, bytes.starts(with: "HTTP/".utf8) { throw HTTPParseError.unsupportedVersion(text) }
        throw HTTPParseError.invalidRequestLine
    }

    /// The field lines, each read in one pass over its bytes: the line end, the colon, and whether the name is a
    /// token and the value is made of field characters are found together. Errors are reported in the order the
    /// checks are listed at the top, for a line that ends in CRLF; an unterminated last line is not part of the
    /// head. Each field is recorded as offsets: `headers.storage` holds a copy of `lines.bytes` at the same indices.
    private static func parseFields(_ lines: inout Lines, into headers: inout HTTPHeaders, limits: HeadLimits) throws {
        let raw = lines.bytes
        let bytes = raw.bindMemory(to: UInt8.self)
        let n = bytes.count
        var p = lines.position
        defer { lines.position = p }
        while p + 1 < n {
            if bytes[p] == 0x0D && bytes[p + 1] == 0x0A {  // the empty line
                p += 2
                break
            }
            var i = p
            var colon = -1
            var nameIsToken = true
            var valueIsValid = true
            var lineEnd = -1
            // The name, up to the colon (or the line's end).
            while i + 1 < n {
                let c = bytes[i]
                if isTokenChar(c) {  // the usual byte of a name (CR and ':' are not tchar)
                    i += 1
                    continue
                }
                if c == 0x0D && bytes[i + 1] == 0x0A {
                    lineEnd = i
                    break
                }
                i += 1
                if c == 0x3A {
                    colon = i - 1
                    break
                }
                nameIsToken = false
            }
            // The value, eight bytes at a time while none of them is a control character or DEL (so none is the
            // line's CR either); the first such byte is then looked at alone.
            if colon >= 0 {
                while i + 1 < n {
                    if i + 8 <= n {
                        let w = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                        let belowSpace = (w &- 0x2020_2020_2020_2020) & ~w & 0x8080_8080_8080_8080
                        let x = w ^ 0x7F7F_7F7F_7F7F_7F7F
                        let del = (x &- 0x0101_0101_0101_0101) & ~x & 0x8080_8080_8080_8080
                        let flagged = belowSpace | del
                        if flagged == 0 {
                            i += 8
                            continue
                        }
                        // The lowest flag is exact (a borrow only runs upwards): the bytes below it are field
                        // characters; that byte is the one to look at.
                        i += flagged.trailingZeroBitCount >> 3
                        if i + 1 >= n { break }  // the last byte: the line has no CRLF
                    }
                    let c = bytes[i]
                    if c == 0x0D && bytes[i + 1] == 0x0A {
                        lineEnd = i
                        break
                    }
                    if !isFieldValueChar(c) { valueIsValid = false }
                    i += 1
                }
            }
            guard lineEnd >= 0 else {
                p = n
                break
            }
            guard headers.spans.count < limits.maxHeaderCount else { throw HTTPParseError.tooManyHeaders(limit: limits.maxHeaderCount) }
            if bytes[p] == 0x20 || bytes[p] == 0x09 { throw HTTPParseError.obsoleteLineFolding }
            guard colon >= 0 else { throw HTTPParseError.headerWithoutColon }
            if colon > p, bytes[colon - 1] == 0x20 || bytes[colon - 1] == 0x09 { throw HTTPParseError.whitespaceBeforeColon }
            guard colon > p, nameIsToken else { throw HTTPParseError.invalidFieldName }
            var valueStart = colon + 1
            var valueEnd = lineEnd
            while valueStart < valueEnd && (bytes[valueStart] == 0x20 || bytes[valueStart] == 0x09) { valueStart += 1 }
            while valueEnd > valueStart && (bytes[valueEnd - 1] == 0x20 || bytes[valueEnd - 1] == 0x09) { valueEnd -= 1 }
            guard valueIsValid else {
                throw HTTPParseError.invalidFieldValue(name: String(decoding: UnsafeBufferPointer(rebasing: bytes[p..<colon]), as: UTF8.self))
            }
            headers.spans.append(HTTPHeaders.FieldSpan(nameStart: UInt32(p), nameEnd: UInt32(colon),
                                                       valueStart: UInt32(valueStart), valueEnd: UInt32(valueEnd)))
            p = lineEnd + 2
        }
        if p + 1 >= n && p < n { p = n }
    }

    /// The CRLF-terminated lines of a complete head, leading empty lines skipped, stopping at the empty line.
    struct Lines {
        let bytes: UnsafeRawBufferPointer
        var position: Int

        init(_ bytes: UnsafeRawBufferPointer, limits: HeadLimits) throws {
            guard bytes.count <= limits.maxHeadBytes else { throw HTTPParseError.headTooLarge(limit: limits.maxHeadBytes) }
            self.bytes = bytes
            var p = 0
            while p + 1 < bytes.count, bytes[p] == 0x0D, bytes[p + 1] == 0x0A { p += 2 }
            self.position = p
        }

        /// How many LF bytes remain: an upper bound on the lines left. Counted eight bytes at a time (an exact
        /// per-byte zero test on the word XOR-ed with LFs, no carries between bytes), then byte by byte.
        func remainingLineCount() -> Int {
            var n = 0
            var i = position
            let lows: UInt64 = 0x7F7F_7F7F_7F7F_7F7F
            let lineFeeds: UInt64 = 0x0A0A_0A0A_0A0A_0A0A
            while i + 8 <= bytes.count {
                let y = bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) ^ lineFeeds
                let zeroBytes = ~(((y & lows) &+ lows) | y | lows)
                n += zeroBytes.nonzeroBitCount
                i += 8
            }
            while i < bytes.count {
                if bytes[i] == 0x0A { n += 1 }
                i += 1
            }
            return n
        }

        mutating func next() -> Slice<UnsafeRawBufferPointer>? {
            let start = position
            var i = start
            // From one CR to the next (memchr) until one is followed by LF.
            while i + 1 < bytes.count, let base = bytes.baseAddress,
                  let cr = memchr(base + i, 0x0D, bytes.count - 1 - i) {
                i = UnsafeRawPointer(cr) - base
                if bytes[i + 1] == 0x0A {
                    position = i + 2
                    return i == start ? nil : bytes[start..<i]
                }
                i += 1
            }
            position = bytes.count
            return nil
        }
    }
}

extension HeadParser {
    /// Convenience for tests and callers holding an array.
    public static func parseRequest(_ bytes: [UInt8], limits: HeadLimits = HeadLimits()) throws -> RequestHead {
        try bytes.withUnsafeBytes { try parseRequest($0, limits: limits) }
    }

    public static func parseResponse(_ bytes: [UInt8], limits: HeadLimits = HeadLimits()) throws -> ResponseHead {
        try bytes.withUnsafeBytes { try parseResponse($0, limits: limits) }
    }

    public static func headLength(_ bytes: [UInt8], limit: Int) throws -> Int? {
        try bytes.withUnsafeBytes { try headLength($0, limit: limit) }
    }
}

@inline(__always) func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

/// tchar (RFC 9110 §5.6.2): DIGIT, ALPHA and !#$%&'*+-.^_`|~, looked up in a 128-bit set (one bit per ASCII
/// byte; `TokenCharTests` checks it against the list).
@inline(__always) func isTokenChar(_ c: UInt8) -> Bool {
    let low: UInt64 = 0x03FF_6CFA_0000_0000   // 0x00-0x3F: ! # $ % & ' * + - . 0-9
    let high: UInt64 = 0x57FF_FFFF_C7FF_FFFE  // 0x40-0x7F: A-Z ^ _ ` a-z | ~
    if c < 0x40 { return (low >> UInt64(c)) & 1 != 0 }
    if c < 0x80 { return (high >> UInt64(c - 0x40)) & 1 != 0 }
    return false
}

/// field-vchar, SP and HTAB (RFC 9110 §5.5): no NUL, CR, LF, other controls or DEL.
@inline(__always) func isFieldValueChar(_ c: UInt8) -> Bool {
    c == 0x09 || (c >= 0x20 && c != 0x7F)
}

func ascii<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    String(decoding: bytes, as: UTF8.self)
}

/// Bytes as Latin-1 scalars, so that obs-text survives a round trip through `String` unchanged.
func latin1<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    if bytes.allSatisfy({ $0 < 0x80 }) { return String(decoding: bytes, as: UTF8.self) }
    var scalars = String.UnicodeScalarView()
    for b in bytes { scalars.append(Unicode.Scalar(b)) }
    return String(scalars)
}

/// Appends a string known to be ASCII (a token), copying its bytes in one go where it is contiguous.
@inline(__always)
func appendASCII(_ string: String, to out: inout [UInt8]) {
    if string.utf8.withContiguousStorageIfAvailable({ out.append(contentsOf: $0) }) == nil {
        out.append(contentsOf: string.utf8)
    }
}

/// The inverse of `latin1`: every scalar of an HTTP string is at most 0xFF.
func appendLatin1(_ string: String, to out: inout [UInt8]) {
    let copied = string.utf8.withContiguousStorageIfAvailable { bytes -> Bool in
        // ASCII (the usual case) is copied as is; Latin-1 above 0x7F is two UTF-8 bytes per character.
        for b in bytes where b >= 0x80 { return false }
        out.append(contentsOf: bytes)
        return true
    }
    if copied == true { return }
    if string.utf8.allSatisfy({ $0 < 0x80 }) {
        out.append(contentsOf: string.utf8)
        return
    }
    for scalar in string.unicodeScalars { out.append(UInt8(truncatingIfNeeded: scalar.value)) }
}
