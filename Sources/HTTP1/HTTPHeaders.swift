/// One header field as received. Names keep their case for forwarding; comparisons ignore it.
/// Values are kept byte-exact: bytes above 0x7F (obs-text) are held as the Latin-1 scalars of the same value.
public struct HTTPField: Sendable, Equatable {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// An ordered list of header fields with case-insensitive look-up.
public struct HTTPHeaders: Sendable, Equatable, Sequence {
    public private(set) var fields: [HTTPField]

    public init(_ fields: [HTTPField] = []) {
        self.fields = fields
    }

    public init(_ pairs: [(String, String)]) {
        self.fields = pairs.map { HTTPField(name: $0.0, value: $0.1) }
    }

    public func makeIterator() -> IndexingIterator<[HTTPField]> { fields.makeIterator() }

    public var count: Int { fields.count }

    public mutating func add(_ name: String, _ value: String) {
        fields.append(HTTPField(name: name, value: value))
    }

    /// Every value of `name`, in order.
    public func values(_ name: String) -> [String] {
        var result: [String] = []
        for field in fields where field.name.equalsIgnoringASCIICase(name) { result.append(field.value) }
        return result
    }

    public func first(_ name: String) -> String? {
        fields.first { $0.name.equalsIgnoringASCIICase(name) }?.value
    }

    public func contains(_ name: String) -> Bool {
        fields.contains { $0.name.equalsIgnoringASCIICase(name) }
    }

    /// Comma-separated list elements of every `name` field, trimmed, empty elements dropped (RFC 9110 §5.6.1).
    public func listElements(_ name: String) -> [String] {
        guard contains(name) else { return [] }
        return values(name).flatMap { value in
            value.split(separator: ",").map { $0.trimmingHTTPWhitespace() }.filter { !$0.isEmpty }
        }
    }

    /// Whether some comma-separated element of some `name` field equals `token`, ignoring ASCII case (RFC 9110
    /// §5.6.1). Scans the values in place: no array, no substring, no String is made.
    public func containsListElement(_ name: String, _ token: String) -> Bool {
        for field in fields where field.name.equalsIgnoringASCIICase(name) {
            if listValue(field.value, contains: token) { return true }
        }
        return false
    }

    /// How many non-empty list elements the `name` fields hold, and whether the last one equals `token`
    /// (ASCII case-insensitive), without splitting the values.
    func listElementCount(_ name: String, lastEquals token: String) -> (count: Int, lastMatches: Bool) {
        var count = 0
        var lastMatches = false
        for field in fields where field.name.equalsIgnoringASCIICase(name) {
            forEachListElement(field.value) { element in
                count += 1
                lastMatches = element.count == token.utf8.count && token.utf8.elementsEqual(element, by: { $0 == asciiLower($1) })
                return true
            }
        }
        return (count, lastMatches)
    }

    /// The number of `name` fields.
    public func count(of name: String) -> Int {
        var n = 0
        for field in fields where field.name.equalsIgnoringASCIICase(name) { n += 1 }
        return n
    }

    public mutating func remove(_ name: String) {
        fields.removeAll { $0.name.equalsIgnoringASCIICase(name) }
    }

    public mutating func removeAll(where predicate: (HTTPField) -> Bool) {
        // Most heads have nothing to remove: do not touch (and copy) the array then.
        guard fields.contains(where: predicate) else { return }
        fields.removeAll(where: predicate)
    }

    public mutating func replaceOrAdd(_ name: String, _ value: String) {
        remove(name)
        add(name, value)
    }
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
    value.withUTF8 { bytes in
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

@inline(__always)
func bytesEqualIgnoringASCIICase(_ x: UnsafeBufferPointer<UInt8>, _ y: UnsafeBufferPointer<UInt8>) -> Bool {
    guard x.count == y.count else { return false }
    for i in 0..<x.count where x[i] != y[i] {
        if asciiLower(x[i]) != asciiLower(y[i]) { return false }
    }
    return true
}

@inline(__always)
func asciiLower(_ c: UInt8) -> UInt8 {
    (c >= 0x41 && c <= 0x5A) ? c | 0x20 : c
}
