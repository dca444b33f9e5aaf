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
    public func equalsIgnoringASCIICase(_ other: String) -> Bool {
        let a = self.utf8, b = other.utf8
        guard a.count == b.count else { return false }
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
