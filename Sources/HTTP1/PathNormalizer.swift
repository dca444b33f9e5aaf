/// The one canonical spelling of a request path, decided before routing and forwarded as is, so the route
/// that matched and the upstream read the same path.
///
/// RFC 3986 §6.2.2: percent-encoded unreserved characters are decoded (`%61` → `a`, `%7E` → `~`), the other
/// escapes are upper-cased (`%3a` → `%3A`); nothing else is rewritten. What cannot be made unambiguous is
/// refused (`PathRefusal`), because some server would read it as another path: dot segments in any encoding,
/// the `..;` and `.;` forms Java servers strip to dot segments, encoded slashes and backslashes, raw
/// backslashes, empty segments (`//`), NUL and non-ASCII bytes. Two refusals can be relaxed for upstreams that
/// need them (`PathNormalizer.Relaxations`).
public enum PathNormalizer {
    /// Forms that are refused by default but may be allowed for a route.
    public struct Relaxations: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }

        /// Empty segments are merged: `//a///b` is routed and forwarded as `/a/b`.
        public static let mergeSlashes = Relaxations(rawValue: 1)
        /// `%2F` and `%5C` are kept as they are (upper-cased) and matched literally, as data inside a segment.
        public static let keepEscapedSlashes = Relaxations(rawValue: 2)

        public static let all: Relaxations = [.mergeSlashes, .keepEscapedSlashes]
    }

    /// A canonical path and the relaxations it needed (empty when the strict rules accepted it).
    public struct Canonical: Sendable, Equatable {
        public var path: String
        public var used: Relaxations

        public init(path: String, used: Relaxations) {
            self.path = path
            self.used = used
        }
    }

    /// Normalises `path` (no query; it starts with `/`) under `allowing` relaxations.
    public static func normalize(_ path: Substring, allowing: Relaxations = []) -> Result<Canonical, PathRefusal> {
        // The common case, a path already in its canonical form, is the path itself: no copy is made (a String
        // made from a whole-string Substring shares its storage).
        if isPlainlyCanonical(path) { return .success(Canonical(path: String(path), used: [])) }
        return normalizeFully(path, allowing: allowing)
    }

    /// The full pass: every byte judged, escapes decoded or upper-cased into a new path.
    static func normalizeFully(_ path: Substring, allowing: Relaxations) -> Result<Canonical, PathRefusal> {
        let input = Array(path.utf8)
        guard input.first == slash else { return .failure(.notAbsolute) }
        var out: [UInt8] = []
        out.reserveCapacity(input.count)
        var used: Relaxations = []
        // Start of the current segment in `out`, for the dot-segment check; segments split at `/` and at a
        // kept `%2F` or `%5C`, which an upstream may decode into a separator.
        var segmentStart = 0
        var i = 0
        while i < input.count {
            let c = input[i]
            switch c {
            case slash:
                if let refusal = dotSegment(out[segmentStart...]) { return .failure(refusal) }
                if out.last == slash && !out.isEmpty {
                    guard allowing.contains(.mergeSlashes) else { return .failure(.emptySegment) }
                    used.insert(.mergeSlashes)
                } else {
                    out.append(slash)
                }
                segmentStart = out.count
                i += 1
            case percent:
                guard i + 2 < input.count, let high = hexValue(input[i + 1]), let low = hexValue(input[i + 2]) else {
                    return .failure(.invalidEscape)
                }
                let byte = high << 4 | low
                i += 3
                if isUnreserved(byte) {
                    out.append(byte)
                } else if byte == 0 {
                    return .failure(.nul)
                } else if byte == slash || byte == backslash {
                    guard allowing.contains(.keepEscapedSlashes) else {
                        return .failure(byte == slash ? .encodedSlash : .encodedBackslash)
                    }
                    used.insert(.keepEscapedSlashes)
                    if let refusal = dotSegment(out[segmentStart...]) { return .failure(refusal) }
                    out.append(contentsOf: [percent, hexDigits[Int(high)], hexDigits[Int(low)]])
                    segmentStart = out.count
                } else {
                    out.append(contentsOf: [percent, hexDigits[Int(high)], hexDigits[Int(low)]])
                }
            case backslash:
                return .failure(.backslash)
            case 0:
                return .failure(.nul)
            case 0x80...:
                return .failure(.nonASCII)
            case ..<0x20, 0x7F:
                return .failure(.controlCharacter)
            default:
                out.append(c)
                i += 1
            }
        }
        if let refusal = dotSegment(out[segmentStart...]) { return .failure(refusal) }
        return .success(Canonical(path: String(decoding: out, as: UTF8.self), used: used))
    }

    /// Whether `path` is canonical as it stands, in one scan: it starts with `/` and holds only visible ASCII
    /// other than `%` and `\`, no `//`, and no segment starting with `.` (dot segments and their parameter forms
    /// are judged by the full pass). False sends the path through the full pass, which decides.
    static func isPlainlyCanonical(_ path: Substring) -> Bool {
        let check = path.utf8.withContiguousStorageIfAvailable { bytes -> Bool in
            guard bytes.first == slash else { return false }
            var previous: UInt8 = 0
            for c in bytes {
                guard c > 0x20 && c < 0x7F && c != percent && c != backslash else { return false }
                if previous == slash && (c == slash || c == dot) { return false }
                previous = c
            }
            return true
        }
        return check ?? false
    }

    /// How servers that read a canonical path differently would see it, each with the refusal to give when
    /// that reading reaches another route: with `;parameters` (raw or `%3B`) cut from every segment, as Tomcat,
    /// Spring and Jetty do (`/admin;x/s` is `/admin/s`, `/;x/admin` is `/admin`); with kept `%2F` and `%5C`
    /// decoded into separators, as nginx and Python's http.server do; and both. Empty segments that result are
    /// merged, as those servers do. Empty when no server reads `canonical` differently.
    public static func otherReadings(of canonical: String) -> [(path: String, refusal: PathRefusal)] {
        // Every routed request asks: a path without `;` or `%` (the usual one) has no other reading, found by one
        // scan without copying it.
        let plain = canonical.utf8.withContiguousStorageIfAvailable { bytes -> Bool in
            for (i, c) in bytes.enumerated() {
                if c == semicolon || c == percent { return false }
                if c == dot && (i + 1 == bytes.count || bytes[i + 1] == slash) { return false }
            }
            return true
        }
        if plain == true { return [] }
        let bytes = Array(canonical.utf8)
        let hasParameters = bytes.contains(semicolon) || containsEscape(bytes, 0x3B)
        let hasEscapedSlashes = containsEscape(bytes, slash) || containsEscape(bytes, backslash)
        var readings: [(path: String, refusal: PathRefusal)] = []
        if hasParameters { readings.append((reading(bytes, stripParameters: true, decodeSlashes: false), .pathParameters)) }
        if hasEscapedSlashes { readings.append((reading(bytes, stripParameters: false, decodeSlashes: true), .escapedSlashReading)) }
        if hasParameters && hasEscapedSlashes {
            readings.append((reading(bytes, stripParameters: true, decodeSlashes: true), .escapedSlashReading))
        }
        let trimmed = trimmingSegmentEnds(bytes)
        if trimmed != canonical { readings.append((trimmed, .trailingDotReading)) }
        return readings
    }

    /// The path as IIS and Windows file systems read it: dots and spaces (`%20`) at the end of each segment
    /// dropped (`/admin./x` is `/admin/x`), a segment left empty merged away.
    static func trimmingSegmentEnds(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        let segments = bytes.dropFirst().split(separator: slash, omittingEmptySubsequences: false)
        let last = segments.count - 1
        for (k, var segment) in segments.enumerated() {
            let wasEmpty = segment.isEmpty
            while true {
                if segment.last == dot {
                    segment = segment.dropLast()
                } else if segment.count >= 3, segment.suffix(3).elementsEqual([percent, 0x32, 0x30]) {
                    segment = segment.dropLast(3)
                } else {
                    break
                }
            }
            if segment.isEmpty && !(wasEmpty && k == last) { continue }
            out.append(slash)
            out.append(contentsOf: segment)
        }
        return out.isEmpty ? "/" : String(decoding: out, as: UTF8.self)
    }

    private static func containsEscape(_ bytes: [UInt8], _ byte: UInt8) -> Bool {
        firstIndex(of: [percent, hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0xF)]], in: bytes[...]) != nil
    }

    private static func reading(_ bytes: [UInt8], stripParameters: Bool, decodeSlashes: Bool) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var inParameters = false
        var i = 0
        func separator() {
            inParameters = false
            if out.last != slash { out.append(slash) }
        }
        while i < bytes.count {
            let c = bytes[i]
            if c == slash { separator(); i += 1; continue }
            if c == percent, i + 2 < bytes.count, let high = hexValue(bytes[i + 1]), let low = hexValue(bytes[i + 2]) {
                let byte = high << 4 | low
                if decodeSlashes && (byte == slash || byte == backslash) { separator(); i += 3; continue }
                if stripParameters && byte == semicolon { inParameters = true }
                if !inParameters { out.append(contentsOf: bytes[i..<(i + 3)]) }
                i += 3
                continue
            }
            if stripParameters && c == semicolon { inParameters = true }
            if !inParameters { out.append(c) }
            i += 1
        }
        return out.isEmpty ? "/" : String(decoding: out, as: UTF8.self)
    }

    /// `.` and `..` (already decoded), also with path parameters (`..;x`, `.;`) or an encoded `;` (`..%3B`):
    /// Tomcat and other servers drop the parameters and then resolve the dot segment.
    static func dotSegment(_ segment: ArraySlice<UInt8>) -> PathRefusal? {
        guard segment.first == dot else { return nil }
        var end = segment.endIndex
        if let semicolon = segment.firstIndex(of: UInt8(ascii: ";")) { end = semicolon }
        if let encoded = firstIndex(of: Array("%3B".utf8), in: segment[..<end]) { end = encoded }
        let name = segment[segment.startIndex..<end]
        guard name.count == 1 || (name.count == 2 && name.last == dot) else { return nil }
        return end == segment.endIndex ? .dotSegment : .dotSegmentWithParameters
    }

    private static func firstIndex(of needle: [UInt8], in haystack: ArraySlice<UInt8>) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        var i = haystack.startIndex
        while i + needle.count <= haystack.endIndex {
            if haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }

    /// ALPHA / DIGIT / "-" / "." / "_" / "~" (RFC 3986 §2.3).
    @inline(__always) public static func isUnreserved(_ c: UInt8) -> Bool {
        isAlnum(c) || c == 0x2D || c == dot || c == 0x5F || c == 0x7E
    }

    @inline(__always) static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }

    static let hexDigits = Array("0123456789ABCDEF".utf8)
    static let slash = UInt8(ascii: "/")
    static let backslash = UInt8(ascii: "\\")
    static let percent = UInt8(ascii: "%")
    static let dot = UInt8(ascii: ".")
    static let semicolon = UInt8(ascii: ";")
}

/// Why a request path was refused: each case is one spelling that some server reads as a different path.
public enum PathRefusal: Error, Sendable, Hashable, CustomStringConvertible {
    case notAbsolute
    /// `.` or `..`, in any encoding (`%2e`, `.%2E`, ...).
    case dotSegment
    /// `..;x`, `.;` or `..%3B`: Tomcat and other Java servers strip the parameter and resolve the dot segment.
    case dotSegmentWithParameters
    case encodedSlash
    case encodedBackslash
    case backslash
    /// `//`: many servers and frameworks merge it away, so `//admin` reads as `/admin`.
    case emptySegment
    case nul
    case nonASCII
    case controlCharacter
    /// `%` not followed by two hex digits.
    case invalidEscape
    /// `;` parameters that servers which strip them (Tomcat, Spring, Jetty) read as a path another route matches.
    case pathParameters
    /// A kept `%2F` or `%5C` that a server decoding it into a separator reads as a path another route matches.
    case escapedSlashReading
    /// Dots or spaces at the end of a segment that servers trimming them (IIS, Windows) read as a path another
    /// route matches.
    case trailingDotReading

    /// One line, for Proxy-Status `details` and the body. Never quotes the request.
    public var description: String {
        switch self {
        case .notAbsolute: return "the path does not start with /"
        case .dotSegment: return "dot segment (. or .., in any encoding) in the path"
        case .dotSegmentWithParameters: return "dot segment with a path parameter (..; or .;) in the path"
        case .encodedSlash: return "encoded slash (%2F) in the path"
        case .encodedBackslash: return "encoded backslash (%5C) in the path"
        case .backslash: return "backslash in the path"
        case .emptySegment: return "empty path segment (//) in the path"
        case .nul: return "NUL (%00) in the path"
        case .nonASCII: return "non-ASCII byte in the path"
        case .controlCharacter: return "control character in the path"
        case .invalidEscape: return "malformed percent escape (% not followed by two hex digits) in the path"
        case .pathParameters: return "path parameter (;) that servers stripping it would read as a path another route matches"
        case .escapedSlashReading: return "encoded slash (%2F or %5C) that servers decoding it would read as a path another route matches"
        case .trailingDotReading: return "dot or space at the end of a path segment that servers trimming it (IIS, Windows) would read as a path another route matches"
        }
    }

    /// The relaxation that would let a route accept this form, if any.
    public var relaxation: PathNormalizer.Relaxations? {
        switch self {
        case .emptySegment: return .mergeSlashes
        case .encodedSlash, .encodedBackslash: return .keepEscapedSlashes
        default: return nil
        }
    }
}
