/// A length of time written in the config as `250ms`, `5s`, `2m`, `1h` or a sum such as `1m30s`.
public struct TimeSpan: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var milliseconds: Int

    public init(milliseconds: Int) { self.milliseconds = milliseconds }
    public static func seconds(_ s: Int) -> TimeSpan { TimeSpan(milliseconds: s * 1000) }
    public static func < (a: TimeSpan, b: TimeSpan) -> Bool { a.milliseconds < b.milliseconds }

    public var description: String {
        if milliseconds % 1000 != 0 { return "\(milliseconds)ms" }
        return "\(milliseconds / 1000)s"
    }

    /// The longest duration written: 999999999h (in milliseconds, far from an Int's end, so that a deadline
    /// `now + span`, or the span in microseconds, cannot overflow).
    public static let longest = 999_999_999 * 3_600_000

    public static func parse(_ text: String) -> TimeSpan? {
        var total = 0
        var number = 0
        var digits = 0
        var chars = Array(text.utf8)[...]
        guard !chars.isEmpty else { return nil }
        while let c = chars.first {
            if c >= 0x30 && c <= 0x39 {
                guard digits < 9 else { return nil }
                number = number * 10 + Int(c - 0x30)
                digits += 1
                chars = chars.dropFirst()
                continue
            }
            guard digits > 0 else { return nil }
            let unit: Int
            if chars.starts(with: "ms".utf8) { unit = 1; chars = chars.dropFirst(2) }
            else if c == UInt8(ascii: "s") { unit = 1000; chars = chars.dropFirst() }
            else if c == UInt8(ascii: "m") { unit = 60_000; chars = chars.dropFirst() }
            else if c == UInt8(ascii: "h") { unit = 3_600_000; chars = chars.dropFirst() }
            else { return nil }
            // Parts that add up beyond the longest one part can say are no duration (the loader names the key),
            // never an arithmetic overflow here or where a deadline is computed from it.
            let (sum, overflow) = total.addingReportingOverflow(number * unit)
            guard !overflow, sum <= Self.longest else { return nil }
            total = sum
            number = 0
            digits = 0
        }
        guard digits == 0 else { return nil }  // a trailing number without a unit
        return TimeSpan(milliseconds: total)
    }
}

/// A numeric IP address and port, e.g. `127.0.0.1:3128` or `[::1]:3128`.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var isIPv6: Bool { host.contains(":") }

    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Parses `IPv4:port` or `[IPv6]:port`; `localhost` is taken as 127.0.0.1.
    public static func parse(_ text: String) -> HostPort? {
        var hostPart: Substring
        var portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            hostPart = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            guard after.hasPrefix(":") else { return nil }
            portPart = after.dropFirst()
            guard IPAddress(String(hostPart))?.isV6 == true else { return nil }
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
            if hostPart == "localhost" { hostPart = "127.0.0.1" }
            guard IPAddress(String(hostPart))?.isV6 == false else { return nil }
        }
        guard let port = Int(portPart), port >= 0, port <= 65535, !portPart.hasPrefix("+") else { return nil }
        return HostPort(host: String(hostPart), port: port)
    }
}

/// An IPv4 or IPv6 address as 4 or 16 bytes.
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    public var bytes: [UInt8]

    public var isV6: Bool { bytes.count == 16 }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// Dotted-quad IPv4 (exactly four decimal parts) or RFC 4291 IPv6 text, with `::` and an embedded IPv4 tail.
    public init?(_ text: String) {
        if let v4 = IPAddress.parseV4(Substring(text)) {
            bytes = v4
        } else if let v6 = IPAddress.parseV6(text) {
            bytes = v6
        } else {
            return nil
        }
    }

    static func parseV4(_ text: Substring) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy({ $0.isASCII && $0.isNumber }), let v = Int(p), v <= 255 else { return nil }
            if p.count > 1 && p.first == "0" { return nil }  // no octal-looking forms
            out.append(UInt8(v))
        }
        return out
    }

    static func parseV6(_ text: String) -> [UInt8]? {
        guard text.contains(":"), text.count <= 45 else { return nil }
        var halves: [String] = [text]
        if let range = text.firstRange(of: "::") {
            halves = [String(text[..<range.lowerBound]), String(text[range.upperBound...])]
            if halves[1].contains("::") { return nil }
        }
        func groups(_ s: String) -> [UInt8]? {
            if s.isEmpty { return [] }
            var out: [UInt8] = []
            let parts = s.split(separator: ":", omittingEmptySubsequences: false)
            for (i, p) in parts.enumerated() {
                if i == parts.count - 1, p.contains(".") {
                    guard let v4 = parseV4(p) else { return nil }
                    out += v4
                    continue
                }
                guard !p.isEmpty, p.count <= 4, let v = UInt16(p, radix: 16) else { return nil }
                out += [UInt8(v >> 8), UInt8(v & 0xFF)]
            }
            return out
        }
        guard let head = groups(halves[0]) else { return nil }
        if halves.count == 1 { return head.count == 16 ? head : nil }
        guard let tail = groups(halves[1]), head.count + tail.count <= 14 else { return nil }
        return head + [UInt8](repeating: 0, count: 16 - head.count - tail.count) + tail
    }

    public var isLoopback: Bool {
        if isV6 {
            if bytes == [UInt8](repeating: 0, count: 15) + [1] { return true }
            if let v4 = mappedV4 { return v4.isLoopback }
            return false
        }
        return bytes[0] == 127
    }

    /// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
    public var mappedV4: IPAddress? {
        guard isV6, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF else { return nil }
        return IPAddress(bytes: Array(bytes[12..<16]))
    }

    public var description: String {
        if !isV6 { return bytes.map(String.init).joined(separator: ".") }
        var groups: [String] = []
        for i in stride(from: 0, to: 16, by: 2) { groups.append(String(UInt16(bytes[i]) << 8 | UInt16(bytes[i + 1]), radix: 16)) }
        return groups.joined(separator: ":")
    }
}

/// An address range such as `10.0.0.0/8` or `fd00::/8`; a bare address means just that address.
public struct CIDR: Sendable, Hashable, CustomStringConvertible {
    public var address: IPAddress
    public var prefixLength: Int

    public static func parse(_ text: String) -> CIDR? {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(String(parts[0])) else { return nil }
        let maxBits = address.bytes.count * 8
        var prefix = maxBits
        if parts.count == 2 {
            guard let p = Int(parts[1]), p >= 0, p <= maxBits, parts[1].allSatisfy({ $0.isNumber }) else { return nil }
            prefix = p
        }
        return CIDR(address: address, prefixLength: prefix)
    }

    public func contains(_ candidate: IPAddress) -> Bool {
        var other = candidate
        if !address.isV6, let v4 = candidate.mappedV4 { other = v4 }
        guard other.bytes.count == address.bytes.count else { return false }
        var bits = prefixLength
        for i in 0..<address.bytes.count where bits > 0 {
            let take = min(8, bits)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - take))
            if address.bytes[i] & mask != other.bytes[i] & mask { return false }
            bits -= take
        }
        return true
    }

    public var description: String { "\(address)/\(prefixLength)" }
}
