/// Rewrites the URLs in a response's `Location` and `Content-Location` so that a client following them stays on
/// the proxy, as nginx's `proxy_redirect default` does for its own upstreams.
///
/// Pure: no sockets, no configuration lookups of its own (the forward rule asks a predicate).
public struct LocationRewrite: Sendable {
    public enum Rule: Sendable {
        /// A sidecar listener: a URL on the listener's upstream (`https`, that host, that port) becomes the same
        /// path on `http://` + `listenerAuthority`. A scheme-relative URL (`//host/...`) on the upstream's host and
        /// port becomes `//listenerAuthority/...`. Every other host, scheme or port is left alone.
        case sidecar(upstreamHost: String, upstreamPort: Int, listenerAuthority: String)
        /// The forward path: `https://host[:port]/...` becomes `http://host[:port]/...` when `isProxied` says the
        /// proxy re-originates that URL itself (an `mtls` route). Arguments: lower-cased host, port (443 when the
        /// URL names none), path without query.
        case httpsToHTTP(isProxied: @Sendable (String, Int, Substring) -> Bool)
    }

    public var rule: Rule

    public init(_ rule: Rule) {
        self.rule = rule
    }

    /// The fields whose values are rewritten.
    static func applies(to name: String) -> Bool {
        name.equalsIgnoringASCIICase("Location") || name.equalsIgnoringASCIICase("Content-Location")
    }

    static func applies(to name: UnsafeBufferPointer<UInt8>) -> Bool {
        (name.count == 8 || name.count == 16)
            && (equalsLowercase(name, "location") || equalsLowercase(name, "content-location"))
    }

    /// The rewritten value, or nil when it stays as it is (relative references, other hosts, anything unparsable).
    public func rewrite(_ value: String) -> String? {
        guard let url = AbsoluteReference.parse(value) else { return nil }
        switch rule {
        case .sidecar(let upstreamHost, let upstreamPort, let listenerAuthority):
            guard url.scheme == nil || url.scheme == "https",
                  url.host == upstreamHost.asciiLowercased, (url.port ?? 443) == upstreamPort else { return nil }
            return (url.scheme == nil ? "//" : "http://") + listenerAuthority + url.rest
        case .httpsToHTTP(let isProxied):
            guard url.scheme == "https" else { return nil }
            let port = url.port ?? 443
            guard isProxied(url.host, port, url.path) else { return nil }
            return "http://" + url.authority + url.rest
        }
    }

    /// The authority that rewritten URLs name for a sidecar listening on `listenAuthority` (`127.0.0.1:9001`,
    /// `[::1]:9001`, `0.0.0.0:9001`): the client's `Host` when it is plain and names the listener's port (so a
    /// client that used `localhost:9001` or a pod's name keeps it), else the listen address. A `Host` naming another
    /// port or none (a client that set `Host` to the upstream's name, say) would send it elsewhere; only a listener
    /// on every address, whose listen address is no place to go, takes any plain `Host`.
    public static func listenerAuthority(host: String?, listenAuthority: String, listenPort: Int, listensOnEveryAddress: Bool) -> String {
        guard let authority = authority(fromHost: host) else { return listenAuthority }
        if listensOnEveryAddress { return authority }
        var port = 80
        if let colon = authority.lastIndex(of: ":"), !authority[colon...].contains("]") {
            port = Int(authority[authority.index(after: colon)...]) ?? 80
        }
        return port == listenPort ? authority : listenAuthority
    }

    /// The authority a client used to reach a listener, taken from its `Host` field, when it is a plain
    /// `host[:port]` (letters, digits, `.-_`, an IPv6 literal in brackets, a numeric port); nil otherwise, so that
    /// nothing odd the client sent is copied into a response field.
    public static func authority(fromHost host: String?) -> String? {
        guard let host, !host.isEmpty, host.utf8.count <= 261 else { return nil }
        var hostPart = Substring(host)
        var portPart: Substring?
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return nil }
            let inside = host[host.index(after: host.startIndex)..<close]
            guard !inside.isEmpty, inside.utf8.allSatisfy({ isHexDigit($0) || $0 == 0x3A || $0 == 0x2E }) else { return nil }
            let after = host[host.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return nil }
                portPart = after.dropFirst()
            }
            hostPart = host[...close]
        } else {
            if let colon = host.firstIndex(of: ":") {
                hostPart = host[..<colon]
                portPart = host[host.index(after: colon)...]
            }
            guard !hostPart.isEmpty, hostPart.utf8.allSatisfy({ isAlphaNumeric($0) || $0 == 0x2E || $0 == 0x2D || $0 == 0x5F })
            else { return nil }
        }
        if let portPart {
            guard !portPart.isEmpty, portPart.utf8.count <= 5, portPart.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let n = Int(portPart), n > 0, n <= 65535 else { return nil }
        }
        return host
    }
}

/// The parts of an absolute (`scheme://authority...`) or scheme-relative (`//authority...`) URL reference that the
/// rewrite needs. Userinfo (`user@host`) is not parsed: such a URL is left alone.
struct AbsoluteReference: Equatable {
    /// Lower-cased; nil for a scheme-relative reference.
    var scheme: String?
    /// The authority as written.
    var authority: String
    /// Lower-cased, without brackets for IPv6 literals.
    var host: String
    var port: Int?
    /// Everything after the authority: path, query, fragment (may be empty).
    var rest: String
    /// The path alone, without query or fragment ("/" when empty).
    var path: Substring

    static func parse(_ value: String) -> AbsoluteReference? {
        let text = Substring(value)
        var scheme: String?
        var afterScheme: Substring
        if text.hasPrefix("//") {
            afterScheme = text.dropFirst(2)
        } else {
            guard let colon = text.firstIndex(of: ":") else { return nil }
            let name = text[..<colon]
            guard let first = name.utf8.first, isAlpha(first),
                  name.utf8.allSatisfy({ isAlphaNumeric($0) || $0 == 0x2B || $0 == 0x2D || $0 == 0x2E }) else { return nil }
            let afterColon = text[text.index(after: colon)...]
            guard afterColon.hasPrefix("//") else { return nil }
            scheme = String(name).asciiLowercased
            afterScheme = afterColon.dropFirst(2)
        }
        let end = afterScheme.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? afterScheme.endIndex
        let authority = afterScheme[..<end]
        let rest = afterScheme[end...]
        guard !authority.isEmpty, !authority.contains("@"),
              !authority.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7F }) else { return nil }
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return nil }
                portText = after.dropFirst()
            }
        } else {
            if let colon = authority.firstIndex(of: ":") {
                host = authority[..<colon]
                portText = authority[authority.index(after: colon)...]
            } else {
                host = authority
            }
        }
        guard !host.isEmpty else { return nil }
        var port: Int?
        if let portText, !portText.isEmpty {  // "host:" means the default port (RFC 3986 §3.2.3)
            guard portText.utf8.count <= 5, portText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let n = Int(portText), n > 0, n <= 65535 else { return nil }
            port = n
        }
        var lowered = String(host).asciiLowercased
        if lowered.hasSuffix(".") { lowered.removeLast() }
        let pathEnd = rest.firstIndex(where: { $0 == "?" || $0 == "#" }) ?? rest.endIndex
        let path = rest[..<pathEnd]
        return AbsoluteReference(scheme: scheme, authority: String(authority), host: lowered, port: port, rest: String(rest),
                                 path: path.isEmpty ? "/" : path)
    }
}

@inline(__always) private func isAlpha(_ c: UInt8) -> Bool { (c | 0x20) >= 0x61 && (c | 0x20) <= 0x7A }
@inline(__always) private func isAlphaNumeric(_ c: UInt8) -> Bool { isAlpha(c) || (c >= 0x30 && c <= 0x39) }
