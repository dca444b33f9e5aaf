public enum HTTPVersion: Sendable, Equatable {
    case http10
    case http11

    public var text: String { self == .http10 ? "HTTP/1.0" : "HTTP/1.1" }
}

/// A request head. A parsed head keeps its target (and its fields, see `HTTPHeaders`) as offsets over its own
/// copy of the received bytes; `target` makes a String only when asked.
public struct RequestHead: Sendable, Equatable {
    public var method: String
    public var version: HTTPVersion
    public internal(set) var headers: HTTPHeaders
    /// The request target: a range of `headers.storage`, outside every field.
    var targetStart: UInt32 = 0
    var targetEnd: UInt32 = 0

    public init(method: String, target: String, version: HTTPVersion = .http11, headers: HTTPHeaders = HTTPHeaders()) {
        self.method = method
        self.version = version
        self.headers = headers
        targetStart = UInt32(self.headers.storage.count)
        self.headers.storage.append(contentsOf: target.utf8)
        targetEnd = UInt32(self.headers.storage.count)
    }

    /// An empty head, for a parser to fill (`HeadParser.parseRequest(_:into:limits:)`).
    /// Empties the head, its bytes overwritten with zeros, keeping the capacity of its buffers for the next parse.
    public mutating func clearKeepingCapacity() {
        headers.removeAllKeepingCapacity()
        targetStart = 0
        targetEnd = 0
    }

    public init() {
        method = ""
        version = .http11
        headers = HTTPHeaders()
    }

    public var target: String {
        withTargetBytes { String(decoding: $0, as: UTF8.self) }
    }

    /// The target's bytes, in place (visible ASCII in a parsed head).
    @inline(__always)
    public func withTargetBytes<R>(_ body: (UnsafeBufferPointer<UInt8>) throws -> R) rethrows -> R {
        try headers.storage.withUnsafeBufferPointer { try body(slice($0, targetStart, targetEnd)) }
    }

    public static func == (a: RequestHead, b: RequestHead) -> Bool {
        a.method == b.method && a.version == b.version && a.headers == b.headers
            && a.withTargetBytes { x in b.withTargetBytes { y in x.elementsEqual(y) } }
    }

    /// Whether the client asked to keep the connection open after this exchange (RFC 9112 §9.3).
    public var wantsKeepAlive: Bool {
        connectionAllowsKeepAlive(headers, version: version)
    }
}

/// A response head; a parsed one keeps its reason phrase and fields as offsets over its own copy of the bytes.
public struct ResponseHead: Sendable, Equatable {
    public var version: HTTPVersion
    public var status: Int
    public internal(set) var headers: HTTPHeaders
    /// The reason phrase: a range of `headers.storage` (Latin-1 bytes), outside every field.
    var reasonStart: UInt32 = 0
    var reasonEnd: UInt32 = 0

    public init(version: HTTPVersion = .http11, status: Int, reason: String, headers: HTTPHeaders = HTTPHeaders()) {
        self.version = version
        self.status = status
        self.headers = headers
        reasonStart = UInt32(self.headers.storage.count)
        for scalar in reason.unicodeScalars { self.headers.storage.append(UInt8(truncatingIfNeeded: scalar.value)) }
        reasonEnd = UInt32(self.headers.storage.count)
    }

    /// An empty head, for a parser to fill (`HeadParser.parseResponse(_:into:limits:)`).
    /// Empties the head, its bytes overwritten with zeros, keeping the capacity of its buffers for the next parse.
    public mutating func clearKeepingCapacity() {
        headers.removeAllKeepingCapacity()
        reasonStart = 0
        reasonEnd = 0
    }

    public init() {
        version = .http11
        status = 0
        headers = HTTPHeaders()
    }

    public var reason: String {
        withReasonBytes { latin1($0) }
    }

    @inline(__always)
    func withReasonBytes<R>(_ body: (UnsafeBufferPointer<UInt8>) throws -> R) rethrows -> R {
        try headers.storage.withUnsafeBufferPointer { try body(slice($0, reasonStart, reasonEnd)) }
    }

    public static func == (a: ResponseHead, b: ResponseHead) -> Bool {
        a.version == b.version && a.status == b.status && a.headers == b.headers
            && a.withReasonBytes { x in b.withReasonBytes { y in x.elementsEqual(y) } }
    }

    /// Whether the upstream lets the connection be reused after this response.
    public var allowsReuse: Bool {
        connectionAllowsKeepAlive(headers, version: version)
    }
}

public struct HeadLimits: Sendable, Equatable {
    public var maxHeadBytes: Int
    public var maxHeaderCount: Int

    public init(maxHeadBytes: Int = 64 * 1024, maxHeaderCount: Int = 256) {
        self.maxHeadBytes = maxHeadBytes
        self.maxHeaderCount = maxHeaderCount
    }
}

/// RFC 9112 §9.3: `Connection: close` ends the connection; HTTP/1.0 keeps it only with `keep-alive`. The
/// `Connection` values are scanned in place (this runs for every request and every response).
@inline(__always)
func connectionAllowsKeepAlive(_ headers: HTTPHeaders, version: HTTPVersion) -> Bool {
    var close = false, keepAlive = false
    headers.forEachValue("Connection") { value in
        forEachListElement(value) { element in
            if equalsLowercase(element, "close") { close = true; return false }
            if equalsLowercase(element, "keep-alive") { keepAlive = true }
            return true
        }
        return !close
    }
    if close { return false }
    return version == .http10 ? keepAlive : true
}
