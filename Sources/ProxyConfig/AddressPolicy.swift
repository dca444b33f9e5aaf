/// Which upstream addresses the proxy refuses to dial unless a route says otherwise: the SSRF guard.
/// Checked on the address DNS returned, so a public name that resolves to a private address is caught too.
public enum AddressPolicy {
    /// Why `address` is not a public unicast address, or nil when it is.
    public static func nonPublicReason(_ address: IPAddress) -> String? {
        if address.isV6 {
            if let v4 = address.mappedV4 { return nonPublicReason(v4).map { "IPv4-mapped \($0)" } }
            let b = address.bytes
            if b.allSatisfy({ $0 == 0 }) { return "unspecified" }
            if address.isLoopback { return "loopback" }
            if b[0..<12].allSatisfy({ $0 == 0 }) { return "IPv4-compatible" }  // ::a.b.c.d (deprecated)
            if b[0] & 0xFE == 0xFC { return "unique-local" }                   // fc00::/7
            if b[0] == 0xFE && b[1] & 0xC0 == 0x80 { return "link-local" }      // fe80::/10
            if b[0] == 0xFE && b[1] & 0xC0 == 0xC0 { return "site-local" }      // fec0::/10
            if b[0] == 0xFF { return "multicast" }                              // ff00::/8
            if b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0D && b[3] == 0xB8 { return "documentation" }  // 2001:db8::/32
            if b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xFF && b[3] == 0x9B { return "NAT64" }           // 64:ff9b::/96
            if b[0] == 0x20 && b[1] == 0x02 {                                                          // 6to4: 2002:V4ADDR::/48
                if let inner = IPAddress(bytes: Array(b[2..<6])), let reason = nonPublicReason(inner) { return "6to4 \(reason)" }
            }
            return nil
        }
        let b = address.bytes
        switch (b[0], b[1]) {
        case (0, _): return "unspecified (0.0.0.0/8)"
        case (10, _): return "private (10.0.0.0/8)"
        case (100, 64...127): return "shared address space (100.64.0.0/10)"
        case (127, _): return "loopback"
        case (169, 254): return b[2] == 169 && b[3] == 254 ? "link-local (cloud metadata 169.254.169.254)" : "link-local"
        case (172, 16...31): return "private (172.16.0.0/12)"
        case (192, 0) where b[2] == 0: return "IETF protocol assignments (192.0.0.0/24)"
        case (192, 0) where b[2] == 2: return "documentation"
        case (192, 168): return "private (192.168.0.0/16)"
        case (198, 18...19): return "benchmarking (198.18.0.0/15)"
        case (198, 51) where b[2] == 100: return "documentation"
        case (203, 0) where b[2] == 113: return "documentation"
        case (224...239, _): return "multicast"
        case (240...255, _): return b == [255, 255, 255, 255] ? "broadcast" : "reserved (240.0.0.0/4)"
        default: return nil
        }
    }

    /// The address a legacy numeric host such as `2130706433`, `0x7f000001`, `0177.0.0.1` or `127.1` stands for
    /// (inet_aton's forms), or nil when `host` is not one. Such hosts are refused outright: resolvers and
    /// libraries disagree about them, which is what SSRF filters get bypassed with.
    public static func legacyNumericIPv4(_ host: String) -> IPAddress? {
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...4).contains(parts.count) else { return nil }
        var values: [UInt64] = []
        for part in parts {
            guard !part.isEmpty else { return nil }
            var text = Substring(part.lowercased())
            var radix = 10
            if text.hasPrefix("0x") { radix = 16; text = text.dropFirst(2) }
            else if text.count > 1 && text.hasPrefix("0") { radix = 8; text = text.dropFirst() }
            if text.isEmpty && radix == 16 { values.append(0); continue }
            guard let v = UInt64(text, radix: radix), v <= 0xFFFF_FFFF else { return nil }
            values.append(v)
        }
        var value: UInt64
        switch values.count {
        case 1: value = values[0]
        case 2: guard values[0] <= 0xFF, values[1] <= 0xFF_FFFF else { return nil }; value = values[0] << 24 | values[1]
        case 3: guard values[0] <= 0xFF, values[1] <= 0xFF, values[2] <= 0xFFFF else { return nil }; value = values[0] << 24 | values[1] << 16 | values[2]
        default:
            guard values.allSatisfy({ $0 <= 0xFF }) else { return nil }
            value = values[0] << 24 | values[1] << 16 | values[2] << 8 | values[3]
        }
        guard value <= 0xFFFF_FFFF else { return nil }
        return IPAddress(bytes: [UInt8(value >> 24 & 0xFF), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)])
    }

    /// Whether `host` is written in one of the legacy numeric forms rather than as a canonical dotted quad, or
    /// as an IPv4-mapped IPv6 literal (`::ffff:127.0.0.1`), which is dialled as the IPv4 address but would not
    /// be matched by a route naming it.
    public static func isNonCanonicalNumericHost(_ host: String) -> Bool {
        if host.contains(":") { return IPAddress(host)?.mappedV4 != nil }
        return legacyNumericIPv4(host) != nil && IPAddress(host) == nil
    }
}
