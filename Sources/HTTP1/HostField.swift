/// The Host field of a request (RFC 9112 §3.2): at most one, and its value `uri-host [ ":" port ]` (RFC 3986). A
/// server must answer 400 to a request with more than one, or with an invalid value; the proxy checks it on every
/// listener before it rewrites Host for the upstream, so that no value another server might read differently
/// (a path, userinfo, a list of hosts) is accepted.
public enum HostField {
    /// The number of Host fields of `head`, after checking that there is at most one and that its value is valid.
    public static func check(_ headers: HTTPHeaders) throws -> Int {
        var count = 0
        var valid = true
        headers.forEachValue("Host") { value in
            count += 1
            valid = isValid(value)
            return count == 1
        }
        if count > 1 { throw HTTPParseError.multipleHosts }
        if !valid { throw HTTPParseError.invalidHostField }
        return count
    }

    /// `host [ ":" port ]`, host an IP literal in brackets or a registered name (which covers IPv4 addresses)
    /// of unreserved characters and percent-encodings. Stricter than RFC 3986 in two ways that no real host
    /// needs: the name is not empty (an `http` or `https` URI has a host), and it holds none of the sub-delims
    /// (`!$&'()*+,;=`), which would let a comma-separated list of hosts through.
    public static func isValid(_ value: UnsafeBufferPointer<UInt8>) -> Bool {
        let n = value.count
        guard n > 0 else { return false }
        var i = 0
        if value[0] == 0x5B {  // "[" IPv6address / IPvFuture "]"
            i = 1
            while i < n && value[i] != 0x5D {
                let c = value[i]
                guard isHexDigit(c) || c == 0x3A || c == 0x2E || c == 0x76 || c == 0x56 else { return false }
                i += 1
            }
            guard i < n, i > 1 else { return false }
            i += 1
        } else {
            while i < n {
                let c = value[i]
                if isUnreserved(c) {  // the usual byte of a name
                    i += 1
                    continue
                }
                if c == 0x3A { break }  // the port follows
                guard c == 0x25, i + 2 < n, isHexDigit(value[i + 1]), isHexDigit(value[i + 2]) else { return false }  // pct-encoded
                i += 3
            }
            guard i > 0 else { return false }
        }
        if i == n { return true }
        guard value[i] == 0x3A else { return false }
        i += 1
        // port = *DIGIT; at most 65535.
        guard n - i <= 5 else { return false }
        var port = 0
        while i < n {
            guard isDigit(value[i]) else { return false }
            port = port * 10 + Int(value[i] - 0x30)
            i += 1
        }
        return port <= 65535
    }

    public static func isValid(_ value: String) -> Bool {
        var value = value
        return value.withUTF8 { isValid($0) }
    }

    /// unreserved (RFC 3986 §2.3): ALPHA, DIGIT, "-", ".", "_", "~", looked up in a 128-bit set (one bit per
    /// ASCII byte, as `isTokenChar`; `HostFieldTests` checks it against the list). A Host is checked on every
    /// request: a lookup is a third of the comparisons.
    @inline(__always) static func isUnreserved(_ c: UInt8) -> Bool {
        let low: UInt64 = 0x03FF_6000_0000_0000   // 0x00-0x3F: - . 0-9
        let high: UInt64 = 0x47FF_FFFE_87FF_FFFE  // 0x40-0x7F: A-Z _ a-z ~
        if c < 0x40 { return (low >> UInt64(c)) & 1 != 0 }
        if c < 0x80 { return (high >> UInt64(c - 0x40)) & 1 != 0 }
        return false
    }

    @inline(__always) private static func isHexDigit(_ c: UInt8) -> Bool {
        isDigit(c) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46)
    }
}
