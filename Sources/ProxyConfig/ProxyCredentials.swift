/// Users allowed to use the proxy, read from `[proxy] auth_file`: one `user:hash` per line, where the hash is
/// bcrypt (`$2b$...`, `$2y$...`, as `htpasswd -B` writes) or `sha256:` and 64 hex digits. Never plain text.
public struct ProxyCredentials: Sendable, Equatable {
    public enum Hash: Sendable, Equatable {
        case bcrypt(String)
        /// Lower-case hex.
        case sha256(String)
    }

    public var users: [String: Hash]

    public init(users: [String: Hash]) { self.users = users }

    public static func parse(_ text: String, file: String) throws -> ProxyCredentials {
        var users: [String: Hash] = [:]
        for (i, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.hasSuffix("\r") ? rawLine.dropLast() : rawLine
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex else {
                throw ConfigError(file: file, key: "line \(i + 1)", message: "expected user:hash")
            }
            let user = String(line[..<colon])
            let hash = String(line[line.index(after: colon)...])
            if hash.hasPrefix("$2a$") || hash.hasPrefix("$2b$") || hash.hasPrefix("$2y$") {
                guard hash.utf8.count == 60 else { throw ConfigError(file: file, key: "line \(i + 1)", message: "malformed bcrypt hash for \(user)") }
                users[user] = .bcrypt(hash)
            } else if hash.hasPrefix("sha256:") {
                let hex = hash.dropFirst(7).lowercased()
                guard hex.utf8.count == 64, hex.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else {
                    throw ConfigError(file: file, key: "line \(i + 1)", message: "expected sha256: and 64 hex digits for \(user)")
                }
                users[user] = .sha256(hex)
            } else {
                throw ConfigError(file: file, key: "line \(i + 1)",
                                  message: "the password of \(user) must be a bcrypt ($2b$...) or sha256:HEX hash, never plain text")
            }
        }
        return ProxyCredentials(users: users)
    }

    /// The user and password of a `Proxy-Authorization: Basic ...` value, or nil if it is not one.
    public static func basicCredentials(_ headerValue: String) -> (user: String, password: [UInt8])? {
        let parts = headerValue.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "basic", let decoded = base64Decode(parts[1].trimmingCharacters(in: " \t")) else {
            return nil
        }
        guard let colon = decoded.firstIndex(of: 0x3A) else { return nil }
        return (String(decoding: decoded[..<colon], as: UTF8.self), Array(decoded[(colon + 1)...]))
    }

    /// Standard base64 with padding; nil for anything else.
    public static func base64Decode(_ text: Substring) -> [UInt8]? {
        var out: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        var padding = 0
        for c in text.utf8 {
            let v: UInt32
            switch c {
            case 0x41...0x5A: v = UInt32(c - 0x41)
            case 0x61...0x7A: v = UInt32(c - 0x61 + 26)
            case 0x30...0x39: v = UInt32(c - 0x30 + 52)
            case 0x2B: v = 62
            case 0x2F: v = 63
            case 0x3D: padding += 1; continue
            default: return nil
            }
            if padding > 0 { return nil }
            buffer = buffer << 6 | v
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
            }
        }
        guard (text.utf8.count % 4 == 0), padding <= 2 else { return nil }
        return out
    }
}

extension Substring {
    func trimmingCharacters(in set: String) -> Substring {
        var s = self
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return s
    }
}
