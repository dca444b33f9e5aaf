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

    public var isIPv6Literal: Bool { host.utf8.contains(0x3A) }

    /// The host as it goes in a `Host` header: brackets around IPv6, and the port when it is not implied.
    public func hostHeader(port: Int, defaultPort: Int) -> String {
        let h = isIPv6Literal ? "[\(host)]" : host
        return port == defaultPort ? h : "\(h):\(port)"
    }

    /// The query with its `?`, or empty: forwarded exactly as received.
    public var query: Substring {
        if let q = pathAndQuery.utf8.firstIndex(of: UInt8(ascii: "?")) { return pathAndQuery[q...] }
        return pathAndQuery[pathAndQuery.endIndex...]
    }

    /// The same target with its path replaced by `canonicalPath` (see `PathNormalizer`), the query kept.
    public func withPath(_ canonicalPath: String) -> AbsoluteTarget {
        // Usually the path was canonical already: keep the target as it is (no new string).
        if path.utf8.elementsEqual(canonicalPath.utf8) { return self }
        var copy = self
        copy.pathAndQuery = canonicalPath + query
        return copy
    }

    /// Parses an absolute-form target. Only `http` and `https` are accepted; user info and fragments are rejected.
    /// The path is not judged here: `PathNormalizer` decides its canonical form before routing.
    public static func parse(_ target: String) throws -> AbsoluteTarget {
        var text = target
        // One scan over the target's own bytes: the scheme compared in place, the host lower-cased straight into
        // its String, the path and query copied once (a String that small is stored inline, without allocating).
        return try text.withUTF8 { utf8 in
            guard let schemeEnd = findSchemeSeparator(utf8) else {
                if target.first == "/" { throw HTTPParseError.invalidTarget("origin-form (\"\(target.prefix(64))\"): send an absolute URL such as http://host/path through the proxy") }
                throw HTTPParseError.invalidTarget("expected an absolute http:// URL")
            }
            let schemeBytes = UnsafeBufferPointer(rebasing: utf8[0..<schemeEnd])
            let scheme: String
            if bytesEqualIgnoringASCIICase(schemeBytes, "http") {
                scheme = "http"
            } else if bytesEqualIgnoringASCIICase(schemeBytes, "https") {
                scheme = "https"
            } else {
                let lowered = String(decoding: schemeBytes, as: UTF8.self).asciiLowercased
                throw HTTPParseError.invalidTarget("scheme \"\(lowered)\" is not supported; use http://")
            }
            let authorityStart = schemeEnd + 3
            var authorityEnd = authorityStart
            while authorityEnd < utf8.count, utf8[authorityEnd] != 0x2F, utf8[authorityEnd] != 0x3F, utf8[authorityEnd] != 0x23 {
                authorityEnd += 1
            }
            let rest = UnsafeBufferPointer(rebasing: utf8[authorityEnd...])
            if rest.contains(0x23) { throw HTTPParseError.invalidTarget("a fragment (#) is not sent in a request") }
            let (host, port) = try parseAuthority(UnsafeBufferPointer(rebasing: utf8[authorityStart..<authorityEnd]))
            let pathAndQuery: String
            if rest.isEmpty {
                pathAndQuery = "/"
            } else if rest[0] == 0x3F {
                pathAndQuery = "/" + String(decoding: rest, as: UTF8.self)
            } else {
                pathAndQuery = String(decoding: rest, as: UTF8.self)
            }
            return AbsoluteTarget(scheme: scheme, host: host, explicitPort: port, pathAndQuery: pathAndQuery)
        }
    }

    /// Where the first `://` starts.
    private static func findSchemeSeparator(_ bytes: UnsafeBufferPointer<UInt8>) -> Int? {
        guard bytes.count >= 3 else { return nil }
        for i in 0...(bytes.count - 3) where bytes[i] == 0x3A && bytes[i + 1] == 0x2F && bytes[i + 2] == 0x2F {
            return i
        }
        return nil
    }

    /// Validates an origin-form target (`/path?query`) as received on a fixed listener.
    public static func checkOriginForm(_ target: String) throws {
        guard target.first == "/" else { throw HTTPParseError.invalidTarget("expected a path starting with /") }
        if target.contains("#") { throw HTTPParseError.invalidTarget("a fragment (#) is not sent in a request") }
    }

    /// authority = host [ ":" port ]; host is a reg-name, an IPv4 address or a bracketed IPv6 address.
    /// The host comes back in its one canonical form: lower case, without a trailing dot.
    public static func parseAuthority(_ authority: [UInt8]) throws -> (host: String, port: Int?) {
        try authority.withUnsafeBufferPointer { try parseAuthority($0) }
    }

    static func parseAuthority(_ authority: UnsafeBufferPointer<UInt8>) throws -> (host: String, port: Int?) {
        if authority.contains(0x40) { throw HTTPParseError.invalidTarget("user information (user@) in the URL is not allowed") }
        guard !authority.isEmpty else { throw HTTPParseError.invalidHost }
        var hostBytes: Slice<UnsafeBufferPointer<UInt8>>
        var portBytes: Slice<UnsafeBufferPointer<UInt8>>?
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
            // A fully qualified name's trailing dot names the same host (RFC 1034 §3.1); RFC 6066 forbids it in
            // SNI. One is removed here, so routing, SNI, the certificate check, Host and the pool key agree.
            if hostBytes.count > 1, hostBytes.last == 0x2E { hostBytes = hostBytes.dropLast() }
            guard !hostBytes.isEmpty, hostBytes.count <= 253, hostBytes.last != 0x2E, hostBytes.first != 0x2E,
                  !zip(hostBytes, hostBytes.dropFirst()).contains(where: { $0 == 0x2E && $1 == 0x2E }),
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
        // Lower-cased straight into the host's storage (no intermediate array).
        let host = String(unsafeUninitializedCapacity: hostBytes.count) { buffer in
            var k = 0
            for c in hostBytes {
                buffer[k] = asciiLower(c)
                k += 1
            }
            return k
        }
        return (host, port)
    }
}

@inline(__always) func isHexDigit(_ c: UInt8) -> Bool {
    isDigit(c) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66)
}

@inline(__always) func isAlnum(_ c: UInt8) -> Bool {
    isDigit(c) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
}
