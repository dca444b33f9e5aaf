/// An HTTP/2 header list as bytes: every name and value is a span of one buffer, so a list is built, checked,
/// handed to nghttp2 and written as HTTP/1.1 without a `String` per field. A holder keeps one list and refills
/// it (`removeAll`), so a warm connection translates heads without allocating. Values are bytes as they go on
/// the wire (Latin-1 for HTTP/1.1's obs-text); names of a request list are lowercased as they are appended.
public struct H2HeaderList: Sendable, Equatable {
    /// The names and values, one after another.
    public private(set) var bytes: [UInt8] = []
    /// Each field: its name is `bytes[nameStart..<valueStart]`, its value `bytes[valueStart..<valueEnd]`.
    struct Span: Sendable, Equatable {
        var nameStart: UInt32
        var valueStart: UInt32
        var valueEnd: UInt32
    }
    private(set) var spans: [Span] = []

    public init() {}

    public init(_ fields: [H2Field]) {
        for field in fields { append(field.name, field.value) }
    }

    public var count: Int { spans.count }
    public var isEmpty: Bool { spans.isEmpty }

    /// Empties the list keeping its capacity; the bytes are overwritten with zeros first (a list is reused for
    /// the heads of other clients' requests on the same connection, credentials included).
    public mutating func removeAll() {
        bytes.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        bytes.removeAll(keepingCapacity: true)
        spans.removeAll(keepingCapacity: true)
    }

    /// Empties the list as `removeAll` does; its buffers are dropped rather than kept when they hold room for more
    /// than `limit` bytes (one large head must not make a connection hold that much for the rest of its life).
    public mutating func removeAll(keepingAtMost limit: Int) {
        removeAll()
        if bufferCapacity > limit { self = H2HeaderList() }
    }

    /// The bytes its buffers hold room for (kept across refills).
    public var bufferCapacity: Int { bytes.capacity + spans.capacity * MemoryLayout<Span>.stride }

    /// Appends a field from bytes, as they are.
    public mutating func append(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        let nameStart = UInt32(bytes.count)
        bytes.append(contentsOf: name)
        let valueStart = UInt32(bytes.count)
        bytes.append(contentsOf: value)
        spans.append(Span(nameStart: nameStart, valueStart: valueStart, valueEnd: UInt32(bytes.count)))
    }

    /// Appends a field whose name is lowercased (ASCII) on the way in.
    public mutating func append(lowercasing name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        let nameStart = UInt32(bytes.count)
        for c in name { bytes.append(c >= 0x41 && c <= 0x5A ? c | 0x20 : c) }
        let valueStart = UInt32(bytes.count)
        bytes.append(contentsOf: value)
        spans.append(Span(nameStart: nameStart, valueStart: valueStart, valueEnd: UInt32(bytes.count)))
    }

    /// Appends a field given as a literal name and a value in bytes.
    public mutating func append(_ name: StaticString, value: UnsafeBufferPointer<UInt8>) {
        append(name: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount), value: value)
    }

    /// Appends a field given as Strings: the name's UTF-8 bytes, the value's Latin-1 bytes (each scalar is at most
    /// 0xFF in HTTP).
    public mutating func append(_ name: String, _ value: String) {
        let nameStart = UInt32(bytes.count)
        bytes.append(contentsOf: name.utf8)
        let valueStart = UInt32(bytes.count)
        for scalar in value.unicodeScalars { bytes.append(UInt8(truncatingIfNeeded: scalar.value)) }
        spans.append(Span(nameStart: nameStart, valueStart: valueStart, valueEnd: UInt32(bytes.count)))
    }

    /// Calls `body` with each field's name and value in place, in order, until it returns false.
    @inline(__always)
    public func forEach(_ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) throws -> Bool) rethrows {
        try bytes.withUnsafeBufferPointer { all in
            for s in spans {
                let name = UnsafeBufferPointer(rebasing: all[Int(s.nameStart)..<Int(s.valueStart)])
                let value = UnsafeBufferPointer(rebasing: all[Int(s.valueStart)..<Int(s.valueEnd)])
                if try !body(name, value) { return }
            }
        }
    }

    /// The fields as Strings (allocates: for tests, trailers and error paths, not the data path).
    public var fields: [H2Field] {
        var result: [H2Field] = []
        result.reserveCapacity(spans.count)
        forEach { name, value in
            result.append(H2Field(String(decoding: name, as: UTF8.self),
                                  String(String.UnicodeScalarView(value.lazy.map { Unicode.Scalar($0) }))))
            return true
        }
        return result
    }

    /// The size of the list as SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113 §6.5.2): each name and value
    /// in octets, plus 32 per field.
    public var listSize: Int { bytes.count + 32 * spans.count }
}

/// Byte helpers for the translation: ASCII case folding and comma-separated lists, in place.
enum H2Bytes {
    @inline(__always)
    static func lower(_ c: UInt8) -> UInt8 { c >= 0x41 && c <= 0x5A ? c | 0x20 : c }

    /// Whether `x` equals `literal` (lower case ASCII), ignoring the case of `x`.
    @inline(__always)
    static func equalsLowercase(_ x: UnsafeBufferPointer<UInt8>, _ literal: StaticString) -> Bool {
        let n = literal.utf8CodeUnitCount
        guard x.count == n else { return false }
        let y = literal.utf8Start
        for i in 0..<n where lower(x[i]) != y[i] { return false }
        return true
    }

    /// Whether `x` equals `literal` (lower case ASCII) exactly.
    @inline(__always)
    static func equals(_ x: UnsafeBufferPointer<UInt8>, _ literal: StaticString) -> Bool {
        let n = literal.utf8CodeUnitCount
        guard x.count == n else { return false }
        let y = literal.utf8Start
        for i in 0..<n where x[i] != y[i] { return false }
        return true
    }

    static func equalIgnoringCase(_ x: UnsafeBufferPointer<UInt8>, _ y: UnsafeBufferPointer<UInt8>) -> Bool {
        guard x.count == y.count else { return false }
        for i in 0..<x.count where x[i] != y[i] && lower(x[i]) != lower(y[i]) { return false }
        return true
    }

    /// Calls `body` with each non-empty element of the comma-separated list `value`, trimmed of SP and HTAB
    /// (RFC 9110 §5.6.1), until it returns false.
    @inline(__always)
    static func forEachListElement(_ value: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> Bool) {
        let n = value.count
        var i = 0
        while i < n {
            var end = i
            while end < n && value[end] != 0x2C { end += 1 }
            var s = i, e = end
            while s < e && (value[s] == 0x20 || value[s] == 0x09) { s += 1 }
            while e > s && (value[e - 1] == 0x20 || value[e - 1] == 0x09) { e -= 1 }
            if e > s, !body(UnsafeBufferPointer(rebasing: value[s..<e])) { return }
            i = end + 1
        }
    }

    /// An element without its parameters (what precedes `;`), trimmed.
    @inline(__always)
    static func bare(_ element: UnsafeBufferPointer<UInt8>) -> UnsafeBufferPointer<UInt8> {
        var e = element.firstIndex(of: 0x3B) ?? element.count
        while e > 0 && (element[e - 1] == 0x20 || element[e - 1] == 0x09) { e -= 1 }
        return UnsafeBufferPointer(rebasing: element[0..<e])
    }
}
