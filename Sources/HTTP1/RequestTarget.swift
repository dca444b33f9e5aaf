/// A request target in absolute form (`http://host[:port]/path?query`), as clients send to a forward proxy,
/// or in origin form (`/path?query`), as clients send to a fixed listener.
public struct AbsoluteTarget: Sendable, Equatable {
    public var scheme: String
    /// Lower-cased host name, IPv4 literal, or IPv6 literal without brackets.
    public var host: String
    /// The port written in the URL, if any.
    public var explicitPort: Int?
    /// Path and query in origin form, at least "/".
    public var pathAndQuery: String

    public init(scheme: String, host: String, explicitPort: Int?, pathAndQuery: String) {
        self.scheme = scheme
        self.host = host
        self.explicitPort = explicitPort
        self.pathAndQuery = pathAndQuery
    }

    /// The path without the query, which is what routes match on and what logs may show.
    public var path: Substring {
        if let q = pathAndQuery.utf8.firstIndex(of: UInt8(ascii: "?")) { return pathAndQuery[..<q] }
        return pathAndQuery[...]
    }

    public var isIPv6Literal: Bool { host.contains(":") }

    /// The host as it goes in a `Host` header: brackets around IPv6, and the port when it is not implied.
    public func hostHeader(port: Int, defaultPort: Int) -> String {
        let h = isIPv6Literal ? "[\(host)]" : host
        return port == defaultPort ? h : "\(h):\(port)"
    }

    /// Parses an absolute-form target. Only `http` and `https` are accepted; user info and fragments are rejected.
    public static func parse(_ target: String) throws -> AbsoluteTarget {
        let utf8 = Array(target.utf8)
        guard let schemeEnd = findSubsequence(utf8, Array("://".utf8)) else {
            // The target itself is never quoted: its query may carry a secret.
            if target.first == "/" { throw HTTPParseError.invalidTarget("origin-form (a path without scheme and host): send an absolute URL such as http://host/path through the proxy") }
            throw HTTPParseError.invalidTarget("expected an absolute http:// URL")
        }
        let scheme = String(decoding: utf8[0..<schemeEnd], as: UTF8.self).asciiLowercased
        guard scheme == "http" || scheme == "https" else {
            // Named only when it is a well-known scheme: what precedes "://" may be a query carrying a secret.
            let known: Set<String> = ["ftp", "ws", "wss", "file", "gopher", "socks", "socks4", "socks5", "h2", "h2c", "git", "ssh"]
            throw HTTPParseError.invalidTarget(known.contains(scheme) ? "scheme \"\(scheme)\" is not supported; use http://"
                                                                      : "the URL's scheme is not supported; use http://")
        }
        let authorityStart = schemeEnd + 3
        var authorityEnd = authorityStart
        while authorityEnd < utf8.count, utf8[authorityEnd] != 0x2F, utf8[authorityEnd] != 0x3F, utf8[authorityEnd] != 0x23 {
            authorityEnd += 1
        }
        let authority = Array(utf8[authorityStart..<authorityEnd])
        var rest = Array(utf8[authorityEnd...])
        if rest.contains(0x23) { throw HTTPParseError.invalidTarget("a fragment (#) is not sent in a request") }
        if rest.isEmpty { rest = [0x2F] } else if rest[0] == 0x3F { rest.insert(0x2F, at: 0) }
        let (host, port) = try parseAuthority(authority)
        let pathAndQuery = String(decoding: rest, as: UTF8.self)
        try checkPath(pathAndQuery)
        return AbsoluteTarget(scheme: scheme, host: host, explicitPort: port, pathAndQuery: pathAndQuery)
    }

    /// Validates an origin-form target (`/path?query`) as received on a fixed listener.
    public static func checkOriginForm(_ target: String) throws {
        guard target.first == "/" else { throw HTTPParseError.invalidTarget("expected a path starting with /") }
        if target.contains("#") { throw HTTPParseError.invalidTarget("a fragment (#) is not sent in a request") }
        try checkPath(target)
    }

    /// Dot segments would let `/v1/../admin` slip past a route's path prefix, so they are refused rather than guessed at.
    static func checkPath(_ pathAndQuery: String) throws {
        var path = pathAndQuery.utf8[...]
        if let q = path.firstIndex(of: UInt8(ascii: "?")) { path = path[..<q] }
        // Fast path: a dot segment needs a "." or a "%2e" somewhere.
        guard path.contains(UInt8(ascii: ".")) || path.contains(UInt8(ascii: "%")) else { return }
        let pathString = Substring(path)
        for segment in pathString.split(separator: "/", omittingEmptySubsequences: false) {
            let lower = segment.lowercased()
            if lower == "." || lower == ".." || lower == "%2e" || lower == "%2e%2e" || lower == ".%2e" || lower == "%2e." {
                throw HTTPParseError.invalidTarget("dot segments (. or ..) in the path")
            }
        }
    }

    /// authority = host [ ":" port ]; host is a reg-name, an IPv4 address or a bracketed IPv6 address.
    public static func parseAuthority(_ authority: [UInt8]) throws -> (host: String, port: Int?) {
        if authority.contains(0x40) { throw HTTPParseError.invalidTarget("user information (user@) in the URL is not allowed") }
        guard !authority.isEmpty else { throw HTTPParseError.invalidHost }
        var hostBytes: ArraySlice<UInt8>
        var portBytes: ArraySlice<UInt8>?
        if authority[0] == 0x5B {  // [IPv6]
            guard let close = authority.firstIndex(of: 0x5D) else { throw HTTPParseError.invalidHost }
            hostBytes = authority[1..<close]
            guard hostBytes.allSatisfy({ isHexDigit($0) || $0 == 0x3A || $0 == 0x2E }), hostBytes.contains(0x3A) else {
                throw HTTPParseError.invalidHost
            }
            let after = authority[(close + 1)...]
            if !after.isEmpty {
                guard after.first == 0x3A else { throw HTTPParseError.invalidHost }
                portBytes = after.dropFirst()
            }
        } else {
            if let colon = authority.firstIndex(of: 0x3A) {
                hostBytes = authority[..<colon]
                portBytes = authority[(colon + 1)...]
            } else {
                hostBytes = authority[...]
            }
            guard !hostBytes.isEmpty, hostBytes.count <= 253,
                  hostBytes.allSatisfy({ isAlnum($0) || $0 == 0x2D || $0 == 0x2E || $0 == 0x5F }) else {
                throw HTTPParseError.invalidHost
            }
        }
        var port: Int?
        if let p = portBytes {
            guard !p.isEmpty, p.count <= 5, p.allSatisfy(isDigit) else { throw HTTPParseError.invalidTarget("invalid port") }
            let value = p.reduce(0) { $0 * 10 + Int($1 - 0x30) }
            guard value >= 1 && value <= 65535 else { throw HTTPParseError.invalidTarget("port out of range") }
            port = value
        }
        return (String(decoding: hostBytes.map(asciiLower), as: UTF8.self), port)
    }
}

@inline(__always) func isHexDigit(_ c: UInt8) -> Bool {
    isDigit(c) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66)
}

@inline(__always) func isAlnum(_ c: UInt8) -> Bool {
    isDigit(c) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
}

func findSubsequence(_ haystack: [UInt8], _ needle: [UInt8]) -> Int? {
    guard haystack.count >= needle.count else { return nil }
    for i in 0...(haystack.count - needle.count) where haystack[i..<(i + needle.count)].elementsEqual(needle) {
        return i
    }
    return nil
}
