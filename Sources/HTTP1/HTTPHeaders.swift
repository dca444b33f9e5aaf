/// One header field as a pair of Strings: how callers build heads and how tests read them. A parsed head does
/// not hold fields this way (see `HTTPHeaders`). Values are Latin-1: bytes above 0x7F (obs-text) are the
/// Latin-1 scalars of the same bytes.
public struct HTTPField: Sendable, Equatable {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// An ordered list of header fields with case-insensitive look-up, kept as offsets over one byte buffer: a
/// parsed head's bytes are copied into it once and every name and value is a span of them, compared and
/// forwarded in place. A `String` is made only when a caller asks for one (`first`, `values`, `fields`).
/// A parser can refill the same buffers for the next head (`HeadParser.parseRequest(_:into:)`): a warm
/// connection then parses without allocating.
public struct HTTPHeaders: Sendable, Equatable, Sequence {
    /// Where the names and values are: received bytes (names as sent, values Latin-1), or bytes `add` appended.
    /// It may hold other bytes too (a request's start line): only the spans say what is a field.
    var storage: [UInt8]
    /// Each field's name and value as ranges of `storage`, in order.
    var spans: [FieldSpan]

    struct FieldSpan: Sendable, Equatable {
        var nameStart: UInt32
        var nameEnd: UInt32
        var valueStart: UInt32
        var valueEnd: UInt32

        @inline(__always) var nameCount: Int { Int(nameEnd &- nameStart) }
    }

    public init(_ fields: [HTTPField] = []) {
        storage = []
        spans = []
        for field in fields { add(field.name, field.value) }
    }

    public init(_ pairs: [(String, String)]) {
        storage = []
        spans = []
        for (name, value) in pairs { add(name, value) }
    }

    /// Every field as Strings (allocates: for callers outside the data path).
    public var fields: [HTTPField] {
        var result: [HTTPField] = []
        result.reserveCapacity(spans.count)
        forEachField { name, value in
            result.append(HTTPField(name: String(decoding: name, as: UTF8.self), value: latin1(value)))
            return true
        }
        return result
    }

    public func makeIterator() -> IndexingIterator<[HTTPField]> { fields.makeIterator() }

    public var count: Int { spans.count }

    /// The bytes its buffers hold room for (kept across refills), for a holder that bounds what it keeps.
    public var bufferCapacity: Int { storage.capacity + spans.capacity * MemoryLayout<FieldSpan>.stride }

    public static func == (a: HTTPHeaders, b: HTTPHeaders) -> Bool {
        guard a.spans.count == b.spans.count else { return false }
        return a.storage.withUnsafeBufferPointer { x in
            b.storage.withUnsafeBufferPointer { y in
                for i in a.spans.indices {
                    let s = a.spans[i], t = b.spans[i]
                    guard slice(x, s.nameStart, s.nameEnd).elementsEqual(slice(y, t.nameStart, t.nameEnd)),
                          slice(x, s.valueStart, s.valueEnd).elementsEqual(slice(y, t.valueStart, t.valueEnd)) else { return false }
                }
                return true
            }
        }
    }

    /// Appends a field: the name's UTF-8 bytes, the value's Latin-1 bytes (each scalar is at most 0xFF in HTTP).
    public mutating func add(_ name: String, _ value: String) {
        let nameStart = storage.count
        storage.append(contentsOf: name.utf8)
        let valueStart = storage.count
        if value.utf8.allSatisfy({ $0 < 0x80 }) {
            storage.append(contentsOf: value.utf8)
        } else {
            for scalar in value.unicodeScalars { storage.append(UInt8(truncatingIfNeeded: scalar.value)) }
        }
        spans.append(FieldSpan(nameStart: UInt32(nameStart), nameEnd: UInt32(valueStart), valueStart: UInt32(valueStart),
                               valueEnd: UInt32(storage.count)))
    }

    /// Calls `body` with the fields in place: the storage and the spans, valid only inside `body`.
    @inline(__always)
    func withFields<R>(_ body: (FieldView) throws -> R) rethrows -> R {
        try storage.withUnsafeBufferPointer { bytes in
            try spans.withUnsafeBufferPointer { spans in try body(FieldView(bytes: bytes, spans: spans)) }
        }
    }

    /// Drops the fields whose flag in `drop` (one per field, in order) is set.
    mutating func removeSpans(flagged drop: [Bool]) {
        guard drop.contains(true) else { return }
        var kept: [FieldSpan] = []
        kept.reserveCapacity(spans.count)
        for (i, s) in spans.enumerated() where !drop[i] { kept.append(s) }
        spans = kept
    }

    /// Calls `body` with each field's name and value bytes, in order, until it returns false. The bytes are the
    /// head's own, in place, valid only inside `body` (the HTTP/2 side translates heads from them).
    @inline(__always)
    public func forEachField(_ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) throws -> Bool) rethrows {
        try storage.withUnsafeBufferPointer { bytes in
            try spans.withUnsafeBufferPointer { spans in
                for s in spans {
                    if try !body(slice(bytes, s.nameStart, s.nameEnd), slice(bytes, s.valueStart, s.valueEnd)) { return }
                }
            }
        }
    }

    /// Calls `body` with the value of each field named `name` (ASCII case-insensitive), until it returns false.
    /// Names are compared by length first, then in place.
    @inline(__always)
    func forEachValue(_ name: StaticString, _ body: (_ value: UnsafeBufferPointer<UInt8>) throws -> Bool) rethrows {
        let wanted = UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)
        try forEachField { n, v in
            guard n.count == wanted.count, bytesEqualIgnoringASCIICase(n, wanted) else { return true }
            return try body(v)
        }
    }

    /// The same with a name given as a String.
    @inline(__always)
    func forEachValue(named name: String, _ body: (_ value: UnsafeBufferPointer<UInt8>) throws -> Bool) rethrows {
        var name = name
        try name.withUTF8 { wanted in
            try forEachField { n, v in
                guard n.count == wanted.count, bytesEqualIgnoringASCIICase(n, wanted) else { return true }
                return try body(v)
            }
        }
    }

    /// Every value of `name`, in order.
    public func values(_ name: String) -> [String] {
        var result: [String] = []
        forEachValue(named: name) { result.append(latin1($0)); return true }
        return result
    }

    public func first(_ name: String) -> String? {
        var found: String?
        forEachValue(named: name) { found = latin1($0); return false }
        return found
    }

    public func contains(_ name: String) -> Bool {
        var found = false
        forEachValue(named: name) { _ in found = true; return false }
        return found
    }

    /// Whether a field called `name` (a literal) is present, compared in place.
    @inline(__always)
    func contains(static name: StaticString) -> Bool {
        var found = false
        forEachValue(name) { _ in found = true; return false }
        return found
    }

    /// Comma-separated list elements of every `name` field, trimmed, empty elements dropped (RFC 9110 §5.6.1).
    public func listElements(_ name: String) -> [String] {
        var result: [String] = []
        forEachValue(named: name) { value in
            forEachListElement(value) { result.append(latin1($0)); return true }
            return true
        }
        return result
    }

    /// Whether some comma-separated element of some `name` field equals `token`, ignoring ASCII case (RFC 9110
    /// §5.6.1). Scans the values in place: no array, no substring, no String is made.
    public func containsListElement(_ name: String, _ token: String) -> Bool {
        var token = token
        return token.withUTF8 { t in containsListElement(named: name, t) }
    }

    func containsListElement(named name: String, _ token: UnsafeBufferPointer<UInt8>) -> Bool {
        var found = false
        forEachValue(named: name) { value in
            found = listValue(value, contains: token)
            return !found
        }
        return found
    }

    /// How many non-empty list elements the `name` fields hold, whether the last one equals `token` (ASCII
    /// case-insensitive), and how many name it, parameters aside (`chunked;x` names chunked: RFC 9112 §7 reads a
    /// coding by its name), without splitting the values.
    func listElementCount(_ name: StaticString, lastEquals token: StaticString) -> (count: Int, lastMatches: Bool, matches: Int) {
        var count = 0
        var matches = 0
        var lastMatches = false
        let t = UnsafeBufferPointer(start: token.utf8Start, count: token.utf8CodeUnitCount)
        forEachValue(name) { value in
            forEachListElement(value) { element in
                count += 1
                lastMatches = bytesEqualIgnoringASCIICase(element, t)
                if lastMatches || bytesEqualIgnoringASCIICase(codingName(element), t) { matches += 1 }
                return true
            }
            return true
        }
        return (count, lastMatches, matches)
    }

    /// The number of `name` fields.
    public func count(of name: String) -> Int {
        var n = 0
        forEachValue(named: name) { _ in n += 1; return true }
        return n
    }

    /// The number of `name` fields, `name` a literal.
    @inline(__always)
    func count(static name: StaticString) -> Int {
        var n = 0
        forEachValue(name) { _ in n += 1; return true }
        return n
    }

    public mutating func remove(_ name: String) {
        var name = name
        name.withUTF8 { wanted in removeSpans { n, _ in n.count == wanted.count && bytesEqualIgnoringASCIICase(n, wanted) } }
    }

    public mutating func removeAll(where predicate: (HTTPField) -> Bool) {
        removeSpans { n, v in predicate(HTTPField(name: String(decoding: n, as: UTF8.self), value: latin1(v))) }
    }

    /// Drops the fields for which `predicate` holds; their bytes stay in the storage, unreferenced.
    mutating func removeSpans(_ predicate: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Bool) {
        let drop = storage.withUnsafeBufferPointer { bytes in
            spans.map { predicate(slice(bytes, $0.nameStart, $0.nameEnd), slice(bytes, $0.valueStart, $0.valueEnd)) }
        }
        // Most heads have nothing to remove: do not touch (and copy) the array then.
        guard drop.contains(true) else { return }
        var kept: [FieldSpan] = []
        kept.reserveCapacity(spans.count)
        for (i, s) in spans.enumerated() where !drop[i] { kept.append(s) }
        spans = kept
    }

    public mutating func replaceOrAdd(_ name: String, _ value: String) {
        remove(name)
        add(name, value)
    }

    /// Empties the fields (and the storage) keeping their capacity, for a parser to refill.
    mutating func removeAllKeepingCapacity() {
        storage.removeAllZeroing()
        spans.removeAll(keepingCapacity: true)
    }
}

extension Array where Element == UInt8 {
    /// Empties the array, keeping its capacity, after overwriting its bytes with zeros: a buffer reused for the next
    /// head (of this connection or, through the worker's store, of another one) never holds the last one's bytes,
    /// credentials and cookies included.
    public mutating func removeAllZeroing() {
        withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        removeAll(keepingCapacity: true)
    }
}

/// A head's fields in place (see `HTTPHeaders.withFields`): not to be kept beyond the call that made it.
struct FieldView {
    let bytes: UnsafeBufferPointer<UInt8>
    let spans: UnsafeBufferPointer<HTTPHeaders.FieldSpan>

    @inline(__always) func name(_ s: HTTPHeaders.FieldSpan) -> UnsafeBufferPointer<UInt8> { slice(bytes, s.nameStart, s.nameEnd) }
    @inline(__always) func value(_ s: HTTPHeaders.FieldSpan) -> UnsafeBufferPointer<UInt8> { slice(bytes, s.valueStart, s.valueEnd) }

    /// Whether the field's bytes are exactly `name: value` CRLF, one space after the colon and nothing after the
    /// value: a received line in the form the proxy would write it, forwarded with one copy of the line.
    @inline(__always)
    func isWrittenAsForwarded(_ s: HTTPHeaders.FieldSpan) -> Bool {
        let n = Int(s.nameEnd), v = Int(s.valueEnd)
        return Int(s.valueStart) == n + 2 && v + 2 <= bytes.count && bytes[n] == 0x3A && bytes[n + 1] == 0x20
            && bytes[v] == 0x0D && bytes[v + 1] == 0x0A
    }
}

@inline(__always)
func slice(_ bytes: UnsafeBufferPointer<UInt8>, _ start: UInt32, _ end: UInt32) -> UnsafeBufferPointer<UInt8> {
    UnsafeBufferPointer(start: bytes.baseAddress.map { $0 + Int(start) }, count: Int(end &- start))
}

extension String {
    /// ASCII case-insensitive equality, the comparison HTTP uses for field names and tokens.
    /// The length test is inlined at each call (most names differ in length); the bytes are compared out of line.
    @inline(__always)
    public func equalsIgnoringASCIICase(_ other: String) -> Bool {
        guard utf8.count == other.utf8.count else { return false }
        return sameLengthEqualsIgnoringASCIICase(other)
    }

    @inline(never)
    func sameLengthEqualsIgnoringASCIICase(_ other: String) -> Bool {
        let a = self.utf8, b = other.utf8
        // Native strings are contiguous: compare their bytes directly (this runs for every header, every request).
        if let result = a.withContiguousStorageIfAvailable({ x in
            b.withContiguousStorageIfAvailable { y in bytesEqualIgnoringASCIICase(x, y) }
        }), let equal = result {
            return equal
        }
        for (x, y) in zip(a, b) where x != y {
            if asciiLower(x) != asciiLower(y) { return false }
        }
        return true
    }

    public var asciiLowercased: String {
        String(decoding: utf8.map(asciiLower), as: UTF8.self)
    }
}

/// Whether the comma-separated list `value` holds an element equal to `token` (ASCII, compared without case).
/// `token` must be lower case ASCII or a field name (compared ignoring case on both sides).
func listValue(_ value: String, contains token: String) -> Bool {
    var value = value, token = token
    return value.withUTF8 { v in token.withUTF8 { t in listValue(v, contains: t) } }
}

@inline(__always)
func listValue(_ value: UnsafeBufferPointer<UInt8>, contains token: UnsafeBufferPointer<UInt8>) -> Bool {
    var found = false
    forEachListElement(value) { element in
        found = bytesEqualIgnoringASCIICase(element, token)
        return !found
    }
    return found
}

/// Calls `body` with each non-empty element of the comma-separated list `value`, trimmed of SP and HTAB, as
/// bytes in place; stops when `body` returns false. Latin-1 values stored as UTF-8 split the same way: their
/// non-ASCII bytes are never a comma or whitespace.
@inline(__always)
func forEachListElement(_ value: String, _ body: (UnsafeBufferPointer<UInt8>) -> Bool) {
    var value = value
    value.withUTF8 { forEachListElement($0, body) }
}

@inline(__always)
func forEachListElement(_ bytes: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> Bool) {
    let n = bytes.count
    var i = 0
    while i < n {
        var end = i
        while end < n && bytes[end] != 0x2C { end += 1 }
        var s = i, e = end
        while s < e && (bytes[s] == 0x20 || bytes[s] == 0x09) { s += 1 }
        while e > s && (bytes[e - 1] == 0x20 || bytes[e - 1] == 0x09) { e -= 1 }
        if e > s, !body(UnsafeBufferPointer(rebasing: bytes[s..<e])) { return }
        i = end + 1
    }
}

@inline(__always)
func bytesEqualIgnoringASCIICase(_ x: UnsafeBufferPointer<UInt8>, _ y: String) -> Bool {
    guard x.count == y.utf8.count else { return false }
    var y = y
    return y.withUTF8 { bytesEqualIgnoringASCIICase(x, $0) }
}

extension Substring {
    func trimmingHTTPWhitespace() -> String {
        var s = self[...]
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}

/// Whether `x` equals `literal`, a lower-case ASCII literal, ignoring the case of `x`.
@inline(__always)
func equalsLowercase(_ x: UnsafeBufferPointer<UInt8>, _ literal: StaticString) -> Bool {
    let n = literal.utf8CodeUnitCount
    guard x.count == n else { return false }
    let y = literal.utf8Start
    for i in 0..<n where asciiLower(x[i]) != y[i] { return false }
    return true
}

@inline(__always)
func bytesEqualIgnoringASCIICase(_ x: UnsafeBufferPointer<UInt8>, _ y: UnsafeBufferPointer<UInt8>) -> Bool {
    guard x.count == y.count else { return false }
    for i in 0..<x.count where x[i] != y[i] {
        if asciiLower(x[i]) != asciiLower(y[i]) { return false }
    }
    return true
}

/// A list element's name without its parameters: up to the first ";", whitespace before it left out.
@inline(__always)
func codingName(_ element: UnsafeBufferPointer<UInt8>) -> UnsafeBufferPointer<UInt8> {
    var end = 0
    while end < element.count && element[end] != 0x3B { end += 1 }
    while end > 0 && (element[end - 1] == 0x20 || element[end - 1] == 0x09) { end -= 1 }
    return UnsafeBufferPointer(rebasing: element[0..<end])
}

@inline(__always)
func asciiLower(_ c: UInt8) -> UInt8 {
    (c >= 0x41 && c <= 0x5A) ? c | 0x20 : c
}
