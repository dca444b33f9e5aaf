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
        let connection = headers.listElements("Connection")
        if connection.contains(where: { $0.equalsIgnoringASCIICase("close") }) { return false }
        if version == .http10 { return connection.contains(where: { $0.equalsIgnoringASCIICase("keep-alive") }) }
        return true
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
        let connection = headers.listElements("Connection")
        if connection.contains(where: { $0.equalsIgnoringASCIICase("close") }) { return false }
        if version == .http10 { return connection.contains(where: { $0.equalsIgnoringASCIICase("keep-alive") }) }
        return true
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
