#if canImport(Glibc)
import Glibc
#endif

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
        if let q = queryStart { return pathAndQuery[..<q] }
        return pathAndQuery[...]
    }

    /// Where the `?` is, found over the contiguous UTF-8 in one scan.
    @inline(__always)
    private var queryStart: String.Index? {
        let offset = pathAndQuery.utf8.withContiguousStorageIfAvailable { $0.firstIndex(of: 0x3F) }
        switch offset {
        case .some(.some(let i)): return pathAndQuery.utf8.index(pathAndQuery.utf8.startIndex, offsetBy: i)
        case .some(.none): return nil
        case .none: return pathAndQuery.utf8.firstIndex(of: 0x3F)
        }
    }

    public var isIPv6Literal: Bool {
        host.utf8.withContiguousStorageIfAvailable { $0.contains(0x3A) } ?? host.utf8.contains(0x3A)
    }

    /// The host as it goes in a `Host` header: brackets around IPv6, and the port when it is not implied.
    public func hostHeader(port: Int, defaultPort: Int) -> String {
        let h = isIPv6Literal ? "[\(host)]" : host
        return port == defaultPort ? h : "\(h):\(port)"
    }

    /// The query with its `?`, or empty: forwarded exactly as received.
    public var query: Substring {
        if let q = queryStart { return pathAndQuery[q...] }
        return pathAndQuery[pathAndQuery.endIndex...]
    }

    /// The same target with its path replaced by `canonicalPath` (see `PathNormalizer`), the query kept.
    public func withPath(_ canonicalPath: String) -> AbsoluteTarget {
        var copy = self
        copy.replacePath(with: canonicalPath)
        return copy
    }

    /// Replaces the path with `canonicalPath`, keeping the query; usually the path was canonical already and the
    /// target is left as it is (no new string, no copy of the target).
    public mutating func replacePath(with canonicalPath: String) {
        let current = path
        if current.utf8.count == canonicalPath.utf8.count,
           current.utf8.withContiguousStorageIfAvailable({ a in canonicalPath.utf8.withContiguousStorageIfAvailable { a.elementsEqual($0) } })
               ?? current.utf8.elementsEqual(canonicalPath.utf8) == true {
            return
        }
        pathAndQuery = canonicalPath + query
    }

    /// Parses an absolute-form target. Only `http` and `https` are accepted; user info and fragments are rejected.
    /// The path is not judged here: `PathNormalizer` decides its canonical form before routing.
    public static func parse(_ target: String) throws -> AbsoluteTarget {
        var text = target
        return try text.withUTF8 { try parse($0) }
    }

    /// The same over the target's bytes in place (a parsed head's, see `RequestHead.withTargetBytes`). One scan:
    /// the scheme compared in place, the host lower-cased straight into its String, the path and query copied
    /// once (a String that small is stored inline, without allocating).
    /// `knownHosts` and `recentHost` (the host of the connection's previous request, say) are Strings the host
    /// may turn out to equal: it is then that String, shared instead of made again.
    public static func parse(_ utf8: UnsafeBufferPointer<UInt8>, knownHosts: KnownHosts? = nil, recentHost: String? = nil) throws -> AbsoluteTarget {
        do {
            guard let schemeEnd = findSchemeSeparator(utf8) else {
                // The target itself is never quoted: its query may carry a secret.
                if utf8.first == 0x2F { throw HTTPParseError.invalidTarget("origin-form (a path without scheme and host): send an absolute URL such as http://host/path through the proxy") }
                throw HTTPParseError.invalidTarget("expected an absolute http:// URL")
            }
            let schemeBytes = UnsafeBufferPointer(rebasing: utf8[0..<schemeEnd])
            let scheme: String
            if equalsLowercase(schemeBytes, "http") {
                scheme = "http"
            } else if equalsLowercase(schemeBytes, "https") {
                scheme = "https"
            } else {
                let scheme = String(decoding: schemeBytes, as: UTF8.self).asciiLowercased
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
            let rest = UnsafeBufferPointer(rebasing: utf8[authorityEnd...])
            if firstIndex(of: 0x23, in: rest) != nil { throw HTTPParseError.invalidTarget("a fragment (#) is not sent in a request") }
            let (host, port) = try parseAuthority(UnsafeBufferPointer(rebasing: utf8[authorityStart..<authorityEnd]), knownHosts: knownHosts,
                                                  recentHost: recentHost)
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

    static func parseAuthority(_ authority: UnsafeBufferPointer<UInt8>, knownHosts: KnownHosts? = nil,
                               recentHost: String? = nil) throws -> (host: String, port: Int?) {
        if firstIndex(of: 0x40, in: authority) != nil { throw HTTPParseError.invalidTarget("user information (user@) in the URL is not allowed") }
        guard !authority.isEmpty else { throw HTTPParseError.invalidHost }
        var hostBytes: Slice<UnsafeBufferPointer<UInt8>>
        var portBytes: Slice<UnsafeBufferPointer<UInt8>>?
        var canonicalIPv6: String?
        if authority[0] == 0x5B {  // [IPv6]
            guard let close = authority.firstIndex(of: 0x5D) else { throw HTTPParseError.invalidHost }
            hostBytes = authority[1..<close]
            // One spelling per address (RFC 5952), so a route for [::1] also decides [0:0::1].
            guard let canonical = IPv6Literal.canonical(hostBytes) else { throw HTTPParseError.invalidHost }
            canonicalIPv6 = canonical
            let after = authority[(close + 1)...]
            if !after.isEmpty {
                guard after.first == 0x3A else { throw HTTPParseError.invalidHost }
                portBytes = after.dropFirst()
            }
        } else {
            if let colon = firstIndex(of: 0x3A, in: authority) {
                hostBytes = authority[..<colon]
                portBytes = authority[(colon + 1)...]
            } else {
                hostBytes = authority[...]
            }
            // A fully qualified name's trailing dot names the same host (RFC 1034 §3.1); RFC 6066 forbids it in
            // SNI. One is removed here, so routing, SNI, the certificate check, Host and the pool key agree.
            if hostBytes.count > 1, hostBytes.last == 0x2E { hostBytes = hostBytes.dropLast() }
            guard !hostBytes.isEmpty, hostBytes.count <= 253, hostBytes.last != 0x2E, hostBytes.first != 0x2E else {
                throw HTTPParseError.invalidHost
            }
            // One pass: only letters, digits, '-', '.' and '_', and no empty label ("..").
            var previous: UInt8 = 0
            for c in hostBytes {
                guard isAlnum(c) || c == 0x2D || c == 0x5F || (c == 0x2E && previous != 0x2E) else { throw HTTPParseError.invalidHost }
                previous = c
            }
        }
        var port: Int?
        if let p = portBytes {
            guard !p.isEmpty, p.count <= 5, p.allSatisfy(isDigit) else { throw HTTPParseError.invalidTarget("invalid port") }
            let value = p.reduce(0) { $0 * 10 + Int($1 - 0x30) }
            guard value >= 1 && value <= 65535 else { throw HTTPParseError.invalidTarget("port out of range") }
            port = value
        }
        if let canonicalIPv6 { return (canonicalIPv6, port) }
        // A host the configuration names is handed out as the configuration's own String (nothing allocated).
        let hostView = UnsafeBufferPointer(rebasing: hostBytes)
        if var recent = recentHost, recent.withUTF8({ $0.count == hostView.count && bytesEqualIgnoringASCIICase(hostView, $0) }) {
            return (recent, port)
        }
        if let knownHosts, let known = knownHosts.lookUp(hostView) { return (known, port) }
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

/// The first index of `byte` in `bytes` (memchr).
@inline(__always)
func firstIndex(of byte: UInt8, in bytes: UnsafeBufferPointer<UInt8>) -> Int? {
    guard let base = bytes.baseAddress, !bytes.isEmpty,
          let found = memchr(base, Int32(byte), bytes.count) else { return nil }
    return UnsafeRawPointer(found) - UnsafeRawPointer(base)
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

/// IPv6 address text (RFC 4291 §2.2, without brackets or a zone) in its one canonical spelling (RFC 5952): lower
/// case, no leading zeros, the longest run of two or more zero groups (the first of equal runs) written `::`, and
/// an IPv4-mapped address as `::ffff:a.b.c.d`.
public enum IPv6Literal {
    public static func canonical<Bytes: Collection>(_ text: Bytes) -> String? where Bytes.Element == UInt8 {
        guard let groups = parse(Array(text)) else { return nil }
        if groups[0..<5].allSatisfy({ $0 == 0 }) && groups[5] == 0xFFFF {
            let v4 = [groups[6] >> 8, groups[6] & 0xFF, groups[7] >> 8, groups[7] & 0xFF].map(String.init).joined(separator: ".")
            return "::ffff:" + v4
        }
        var bestStart = -1, bestLength = 1
        var i = 0
        while i < 8 {
            guard groups[i] == 0 else { i += 1; continue }
            var j = i
            while j < 8 && groups[j] == 0 { j += 1 }
            if j - i > bestLength { bestStart = i; bestLength = j - i }
            i = j
        }
        func hex(_ range: Range<Int>) -> String { groups[range].map { String($0, radix: 16) }.joined(separator: ":") }
        guard bestStart >= 0 else { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }

    /// The eight 16-bit groups, or nil when `text` is not an IPv6 address.
    static func parse(_ text: [UInt8]) -> [Int]? {
        guard text.count >= 2, text.count <= 45 else { return nil }
        var halves: [ArraySlice<UInt8>] = [text[...]]
        if let gap = findSubsequence(text, Array("::".utf8)) {
            halves = [text[..<gap], text[(gap + 2)...]]
            if findSubsequence(Array(halves[1]), Array("::".utf8)) != nil { return nil }
        }
        func groups(_ s: ArraySlice<UInt8>, last: Bool) -> [Int]? {
            if s.isEmpty { return [] }
            let parts = s.split(separator: 0x3A, omittingEmptySubsequences: false)
            var out: [Int] = []
            for (n, part) in parts.enumerated() {
                if last, n == parts.count - 1, part.contains(0x2E) {
                    guard let v4 = dottedQuad(part) else { return nil }
                    out += [v4[0] << 8 | v4[1], v4[2] << 8 | v4[3]]
                    continue
                }
                guard !part.isEmpty, part.count <= 4, part.allSatisfy(isHexDigit) else { return nil }
                out.append(part.reduce(0) { $0 << 4 | Int(hexDigitValue($1)) })
            }
            return out
        }
        if halves.count == 1 {
            guard let all = groups(halves[0], last: true), all.count == 8 else { return nil }
            return all
        }
        guard let head = groups(halves[0], last: false), let tail = groups(halves[1], last: true),
              head.count + tail.count <= 7 else { return nil }
        return head + [Int](repeating: 0, count: 8 - head.count - tail.count) + tail
    }

    static func dottedQuad(_ s: ArraySlice<UInt8>) -> [Int]? {
        let parts = s.split(separator: 0x2E, omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [Int] = []
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy(isDigit), !(p.count > 1 && p.first == 0x30) else { return nil }
            let v = p.reduce(0) { $0 * 10 + Int($1 - 0x30) }
            guard v <= 255 else { return nil }
            out.append(v)
        }
        return out
    }

    static func hexDigitValue(_ c: UInt8) -> UInt8 {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        default: return c - 0x61 + 10
        }
    }
}

/// Host names known ahead of any request (the routes' exact hosts, resolved when the configuration is
/// loaded), so that a request naming one gets the configuration's own String instead of a new one: routing,
/// the pool key and the access record then share it, and parsing the target allocates nothing for the host.
public struct KnownHosts: Sendable {
    private struct Slot: Sendable {
        var hash: UInt64
        var host: String
    }
    /// Open addressing, a power of two at least twice the number of hosts; nil slots end a probe.
    private var slots: [Slot?]

    /// `hosts` in canonical form (lower case, no trailing dot); any other spelling could never match.
    public init<S: Sequence>(_ hosts: S) where S.Element == String {
        let unique = Array(Set(hosts))
        var size = 8
        while size < unique.count * 2 { size *= 2 }
        slots = Array(repeating: nil, count: size)
        for host in unique {
            var copy = host
            let hash = copy.withUTF8 { Self.hash($0) }
            var i = Int(truncatingIfNeeded: hash) & (size - 1)
            while slots[i] != nil { i = (i + 1) & (size - 1) }
            slots[i] = Slot(hash: hash, host: host)
        }
    }

    public init() {
        slots = []
    }

    /// FNV-1a over the ASCII-lower-cased bytes.
    @inline(__always)
    private static func hash(_ bytes: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in bytes { h = (h ^ UInt64(asciiLower(b))) &* 0x0000_0100_0000_01B3 }
        return h
    }

    /// The known host equal to `bytes` ignoring ASCII case, if there is one.
    public func lookUp(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
        guard !slots.isEmpty else { return nil }
        let hash = Self.hash(bytes)
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: hash) & mask
        while let slot = slots[i] {
            if slot.hash == hash {
                var host = slot.host
                if host.withUTF8({ $0.count == bytes.count && bytesEqualIgnoringASCIICase(bytes, $0) }) { return slot.host }
            }
            i = (i + 1) & mask
        }
        return nil
    }
}
