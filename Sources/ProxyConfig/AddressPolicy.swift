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
        var host = host
        // A byte scan over the host (every forwarded request asks, and almost every host is a name that fails
        // at its first letter): no split, no lower-cased copies, no array of parts.
        return host.withUTF8 { legacyNumericIPv4Value($0) }.map {
            IPAddress(bytes: [UInt8($0 >> 24 & 0xFF), UInt8($0 >> 16 & 0xFF), UInt8($0 >> 8 & 0xFF), UInt8($0 & 0xFF)])!
        }
    }

    /// The 32-bit value of a legacy numeric host, or nil. Parts are separated by `.` (1 to 4, none empty); each is
    /// decimal, octal after a leading `0`, or hexadecimal after `0x` (`0x` alone is 0); a part's digits may carry
    /// one leading `+` or `-` (only `-0`...), as the integer parser this replaced accepted.
    static func legacyNumericIPv4Value(_ bytes: UnsafeBufferPointer<UInt8>) -> UInt32? {
        var values: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        var count = 0
        var i = 0
        let n = bytes.count
        while true {
            // One part: bytes[i..<end].
            var end = i
            while end < n && bytes[end] != 0x2E { end += 1 }
            guard end > i, count < 4 else { return nil }
            var p = i
            var radix: UInt64 = 10
            if end - p >= 2 && bytes[p] == 0x30 && (bytes[p + 1] | 0x20) == 0x78 {
                radix = 16; p += 2
            } else if end - p > 1 && bytes[p] == 0x30 {
                radix = 8; p += 1
            }
            var value: UInt64 = 0
            if p == end {
                // Only `0x` (an empty decimal or octal rest cannot happen: the part is not empty).
                value = 0
            } else {
                var negative = false
                if bytes[p] == 0x2B || bytes[p] == 0x2D {
                    negative = bytes[p] == 0x2D
                    p += 1
                    guard p < end else { return nil }
                }
                while p < end {
                    let c = bytes[p] | 0x20  // lower case for letters; digits keep their value
                    let digit: UInt64
                    switch bytes[p] {
                    case 0x30...0x39: digit = UInt64(bytes[p] - 0x30)
                    case 0x41...0x46, 0x61...0x66: digit = UInt64(c - 0x61 + 10)
                    default: return nil
                    }
                    guard digit < radix else { return nil }
                    value = value * radix + digit
                    guard value <= 0xFFFF_FFFF else { return nil }
                    p += 1
                }
                if negative && value != 0 { return nil }
            }
            switch count {
            case 0: values.0 = value
            case 1: values.1 = value
            case 2: values.2 = value
            default: values.3 = value
            }
            count += 1
            if end == n { break }
            i = end + 1
        }
        var value: UInt64
        switch count {
        case 1: value = values.0
        case 2: guard values.0 <= 0xFF, values.1 <= 0xFF_FFFF else { return nil }; value = values.0 << 24 | values.1
        case 3: guard values.0 <= 0xFF, values.1 <= 0xFF, values.2 <= 0xFFFF else { return nil }; value = values.0 << 24 | values.1 << 16 | values.2
        default:
            guard values.0 <= 0xFF, values.1 <= 0xFF, values.2 <= 0xFF, values.3 <= 0xFF else { return nil }
            value = values.0 << 24 | values.1 << 16 | values.2 << 8 | values.3
        }
        guard value <= 0xFFFF_FFFF else { return nil }
        return UInt32(value)
    }

    /// Whether `host` is written in one of the legacy numeric forms rather than as a canonical dotted quad, or
    /// as an IPv4-mapped IPv6 literal (`::ffff:127.0.0.1`), which is dialled as the IPv4 address but would not
    /// be matched by a route naming it.
    public static func isNonCanonicalNumericHost(_ host: String) -> Bool {
        // An IPv6 literal is refused only when it is IPv4-mapped (a byte test for the colon: this runs for every request).
        var text = host
        return text.withUTF8 { bytes in
            for c in bytes where c == 0x3A { return IPAddress(host)?.mappedV4 != nil }
            guard legacyNumericIPv4Value(bytes) != nil else { return false }
            return IPAddress(host) == nil
        }
    }
}
