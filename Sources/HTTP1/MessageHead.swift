public enum HTTPVersion: Sendable, Equatable {
    case http10
    case http11

    public var text: String { self == .http10 ? "HTTP/1.0" : "HTTP/1.1" }
}

public struct RequestHead: Sendable, Equatable {
    public var method: String
    public var target: String
    public var version: HTTPVersion
    public var headers: HTTPHeaders

    public init(method: String, target: String, version: HTTPVersion = .http11, headers: HTTPHeaders = HTTPHeaders()) {
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
    }

    /// Whether the client asked to keep the connection open after this exchange (RFC 9112 §9.3).
    public var wantsKeepAlive: Bool {
        connectionAllowsKeepAlive(headers, version: version)
    }
}

public struct ResponseHead: Sendable, Equatable {
    public var version: HTTPVersion
    public var status: Int
    public var reason: String
    public var headers: HTTPHeaders

    public init(version: HTTPVersion = .http11, status: Int, reason: String, headers: HTTPHeaders = HTTPHeaders()) {
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
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
    for field in headers.fields where field.name.equalsIgnoringASCIICase("Connection") {
        forEachListElement(field.value) { element in
            if bytesEqualIgnoringASCIICase(element, "close") { close = true; return false }
            if bytesEqualIgnoringASCIICase(element, "keep-alive") { keepAlive = true }
            return true
        }
        if close { return false }
    }
    return version == .http10 ? keepAlive : true
}
