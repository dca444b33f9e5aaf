import HTTP1

/// How connections to upstream servers leave the host: straight to the service, or through a corporate HTTP
/// proxy with `CONNECT host:port`, inside which the proxy runs TLS (and presents the client certificate) end
/// to end with the service. Part of the pool key and of the TLS session key: nothing is shared across paths.
public enum Egress: Sendable, Hashable, CustomStringConvertible {
    case direct
    case proxy(EgressProxy)

    public var description: String {
        switch self {
        case .direct: return "direct"
        case .proxy(let p): return p.description
        }
    }

    public var corporateProxy: EgressProxy? {
        if case .proxy(let p) = self { return p }
        return nil
    }
}

/// A corporate HTTP proxy: `http://HOST:PORT`, and the file with the `user:password` it wants, if any.
public struct EgressProxy: Sendable, Hashable, CustomStringConvertible {
    /// Lower-case name or IP literal (IPv6 without brackets).
    public var host: String
    public var port: Int
    /// One line `user:password`, sent as `Proxy-Authorization: Basic`; read when the runtime is built.
    public var credentialsFile: String?

    public init(host: String, port: Int, credentialsFile: String? = nil) {
        self.host = host
        self.port = port
        self.credentialsFile = credentialsFile
    }

    /// `http://host:port`, as written in the config (never with credentials).
    public var description: String { "http://\(authority)" }

    public var authority: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Same proxy (host and port), whatever the credentials.
    public func sameAddress(as other: EgressProxy) -> Bool { host == other.host && port == other.port }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case notHTTP
        case userInfo
        case missingPort
        case badPort
        case badHost
        case path

        public var description: String {
            switch self {
            case .notHTTP:
                return "expected \"direct\" or an http:// URL such as \"http://corp-proxy:3128\" (the corporate proxy is spoken to in plain HTTP CONNECT; https:// and socks proxies are not supported)"
            case .userInfo:
                return "credentials do not go in the proxy URL (it would put a secret in the config): put one line user:password in a file and name it with proxy_credentials_file"
            case .missingPort:
                return "the proxy URL needs its port, such as \"http://corp-proxy:3128\""
            case .badPort: return "the proxy URL's port must be 1 to 65535"
            case .badHost: return "the proxy URL's host must be a host name or an IP address (IPv6 in brackets)"
            case .path: return "the proxy URL is http://HOST:PORT, with no path, query or fragment"
            }
        }
    }

    /// Parses `http://HOST:PORT` (a trailing `/` allowed). `direct` is the caller's business.
    public static func parse(_ text: String) -> Result<EgressProxy, ParseError> {
        let lower = text.asciiLowercasedForConfig
        guard lower.hasPrefix("http://") else { return .failure(.notHTTP) }
        var rest = String(text.dropFirst(7))
        if rest.hasSuffix("/") { rest.removeLast() }
        if rest.contains("@") { return .failure(.userInfo) }
        if rest.contains("/") || rest.contains("?") || rest.contains("#") { return .failure(.path) }
        var host: String
        var portText: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return .failure(.badHost) }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            guard after.hasPrefix(":") else { return .failure(after.isEmpty ? .missingPort : .badHost) }
            portText = after.dropFirst()
            guard let canonical = IPv6Literal.canonical(host.utf8) else { return .failure(.badHost) }
            host = canonical
        } else {
            guard let colon = rest.lastIndex(of: ":") else { return .failure(.missingPort) }
            host = String(rest[..<colon]).asciiLowercasedForConfig
            portText = rest[rest.index(after: colon)...]
            if host.count > 1, host.hasSuffix(".") { host.removeLast() }
            guard HostPattern.isValidHostName(host) || IPAddress(host) != nil else { return .failure(.badHost) }
        }
        guard !portText.isEmpty, portText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), portText.count <= 5,
              let port = Int(portText), port >= 1, port <= 65535 else { return .failure(.badPort) }
        return .success(EgressProxy(host: host, port: port))
    }
}

/// The one line of a `proxy_credentials_file`: `user:password`. The password may hold `:`; the user may not.
public enum EgressCredentials {
    public enum Problem: Error, Equatable, CustomStringConvertible {
        case empty
        case noColon
        case emptyUser
        case controlCharacter
        case moreLines

        /// Never quotes the file: it holds a password.
        public var description: String {
            switch self {
            case .empty: return "the file is empty; expected one line user:password"
            case .noColon: return "expected one line user:password (no ':' found)"
            case .emptyUser: return "expected one line user:password (the user is empty)"
            case .controlCharacter: return "the line holds a control character; expected one line user:password"
            case .moreLines: return "expected one line user:password, found more lines"
            }
        }
    }

    /// The `Proxy-Authorization` value (`Basic base64(user:password)`) for the file's text.
    public static func authorization(fileText: String) -> Result<String, Problem> {
        // Bytes, not Characters: "\r\n" is one Character in Swift.
        var lines = Array(fileText.utf8).split(separator: 0x0A, omittingEmptySubsequences: false)
            .map { $0.last == 0x0D ? $0.dropLast() : $0 }
        while let last = lines.last, last.isEmpty { lines.removeLast() }
        guard let line = lines.first else { return .failure(.empty) }
        guard lines.count == 1 else { return .failure(.moreLines) }
        guard line.allSatisfy({ $0 >= 0x20 && $0 != 0x7F }) else { return .failure(.controlCharacter) }
        guard let colon = line.firstIndex(of: 0x3A) else { return .failure(.noColon) }
        guard colon != line.startIndex else { return .failure(.emptyUser) }
        return .success("Basic " + base64Encode(Array(line)))
    }

    /// Standard base64 with padding.
    public static func base64Encode(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], alphabet[Int(n & 63)]]
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let n = UInt32(bytes[i]) << 16
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], UInt8(ascii: "="), UInt8(ascii: "=")]
        } else if rest == 2 {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], UInt8(ascii: "=")]
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Settings a corporate proxy would quietly void, refused with a message that says why and what to do.
public enum EgressGuards {
    /// The SSRF guard checks the addresses a name resolves to; through a corporate proxy the proxy resolves
    /// and dials, and those addresses are never seen here.
    public static func guardUnseen(_ proxy: EgressProxy) -> String {
        "allow_private = false asks the SSRF guard to check the addresses upstream names resolve to, but connections here go through the corporate proxy \(proxy), which resolves and dials them itself: the guard cannot see them. Remove allow_private (routing stays deny-by-default by name, and IP-literal hosts are still checked), or set proxy = \"direct\" where the guard must apply"
    }

    /// `connect` pins the address to dial; the corporate proxy dials what `CONNECT` names.
    public static func connectThroughProxy(_ proxy: EgressProxy) -> String {
        "connect pins the address to dial, but this route's connections go through the corporate proxy \(proxy), which resolves and dials the host itself; set proxy = \"direct\" on the route to dial the address, or remove connect"
    }

    /// A corporate proxy that is one of this proxy's own listeners would send every connection back here.
    public static func refuseLoops(_ config: ProxyConfiguration) throws {
        var listens = [(config.proxy.listen, "proxy.listen")]
        for listener in config.listeners { listens.append((listener.listen, "\(listener.configKey).listen")) }
        var egresses: [(Egress, String)] = [(config.upstream.egress, "upstream.proxy")]
        for route in config.routes { egresses.append((route.egress, "route[\(route.index)].proxy")) }
        for (egress, key) in egresses {
            guard let proxy = egress.corporateProxy else { continue }
            let host = proxy.host == "localhost" ? "127.0.0.1" : proxy.host
            guard let ip = IPAddress(host) else { continue }
            for (listen, listenKey) in listens where listen.port == proxy.port {
                guard let own = IPAddress(listen.host) else { continue }
                if own == ip || (own.bytes.allSatisfy { $0 == 0 } && (ip.isLoopback || ip.bytes.allSatisfy { $0 == 0 })) {
                    throw ConfigError(file: config.file, key: key,
                                      message: "\(proxy) is this proxy's own address (\(listenKey) \(listen)): every connection would come back here; name the corporate proxy")
                }
            }
        }
    }
}
