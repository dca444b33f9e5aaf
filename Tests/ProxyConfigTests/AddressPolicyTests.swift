import Testing
@testable import ProxyConfig

/// The SSRF classifier, for ranges the end-to-end tests must never send a packet to: checked here only.
@Suite struct AddressPolicyTests {
    @Test(arguments: [
        "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.254", "192.168.1.1", "127.0.0.1", "127.8.9.10",
        "169.254.169.254", "169.254.0.1", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "240.0.0.1",
        "192.0.2.1", "198.18.0.1",
        "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1",
        "::ffff:169.254.169.254", "::10.0.0.1", "2001:db8::1", "2002:0a00:0001::1", "64:ff9b::a00:1",
    ])
    func refusesNonPublic(_ text: String) throws {
        let address = try #require(IPAddress(text))
        #expect(AddressPolicy.nonPublicReason(address) != nil, "\(text)")
    }

    @Test(arguments: ["8.8.8.8", "1.1.1.1", "172.32.0.1", "172.15.255.255", "192.169.0.1", "100.128.0.1", "2606:4700::1111",
                      "2a00:1450::1", "::ffff:8.8.8.8"])
    func allowsPublic(_ text: String) throws {
        let address = try #require(IPAddress(text))
        #expect(AddressPolicy.nonPublicReason(address) == nil, "\(text)")
    }

    @Test func metadataAddressIsNamed() {
        #expect(AddressPolicy.nonPublicReason(IPAddress("169.254.169.254")!)?.contains("metadata") == true)
    }

    @Test func legacyNumericForms() {
        #expect(AddressPolicy.legacyNumericIPv4("2130706433") == IPAddress("127.0.0.1"))
        #expect(AddressPolicy.legacyNumericIPv4("0x7f000001") == IPAddress("127.0.0.1"))
        #expect(AddressPolicy.legacyNumericIPv4("0177.0.0.1") == IPAddress("127.0.0.1"))
        #expect(AddressPolicy.legacyNumericIPv4("127.1") == IPAddress("127.0.0.1"))
        #expect(AddressPolicy.legacyNumericIPv4("0") == IPAddress("0.0.0.0"))
        #expect(AddressPolicy.legacyNumericIPv4("10.1.258") == IPAddress("10.1.1.2"))
        #expect(AddressPolicy.legacyNumericIPv4("api.example.com") == nil)
        #expect(AddressPolicy.legacyNumericIPv4("4294967296") == nil)
        #expect(AddressPolicy.isNonCanonicalNumericHost("2130706433"))
        #expect(AddressPolicy.isNonCanonicalNumericHost("0x7f.1"))
        #expect(!AddressPolicy.isNonCanonicalNumericHost("127.0.0.1"))
        #expect(!AddressPolicy.isNonCanonicalNumericHost("api.example.com"))
        #expect(!AddressPolicy.isNonCanonicalNumericHost("123abc"))
    }

    @Test func legacyNumericEdgeForms() {
        #expect(AddressPolicy.legacyNumericIPv4("0x") == IPAddress("0.0.0.0"))
        #expect(AddressPolicy.legacyNumericIPv4("0X7F.0x1") == IPAddress("127.0.0.1"))
        #expect(AddressPolicy.legacyNumericIPv4("0xFFFFFFFF") == IPAddress("255.255.255.255"))
        #expect(AddressPolicy.legacyNumericIPv4("0x100000000") == nil)
        #expect(AddressPolicy.legacyNumericIPv4("037777777777") == IPAddress("255.255.255.255"))
        #expect(AddressPolicy.legacyNumericIPv4("08") == nil)          // 8 is not an octal digit
        #expect(AddressPolicy.legacyNumericIPv4("1.2.3.4.5") == nil)
        #expect(AddressPolicy.legacyNumericIPv4("1.2.3.") == nil)
        #expect(AddressPolicy.legacyNumericIPv4(".1.2.3") == nil)
        #expect(AddressPolicy.legacyNumericIPv4("1..2") == nil)
        #expect(AddressPolicy.legacyNumericIPv4("") == nil)
        #expect(AddressPolicy.legacyNumericIPv4("256.1") == nil)
        #expect(AddressPolicy.legacyNumericIPv4("1.16777216") == nil)
        #expect(AddressPolicy.legacyNumericIPv4("1.2.65536") == nil)
        #expect(AddressPolicy.legacyNumericIPv4("99999999999999999999999") == nil)
        #expect(AddressPolicy.legacyNumericIPv4("1.2.3.4") == IPAddress("1.2.3.4"))
        #expect(!AddressPolicy.isNonCanonicalNumericHost("1.2.3.4"))
        #expect(AddressPolicy.isNonCanonicalNumericHost("01.2.3.4"))
    }

    /// The byte scan agrees with the split-and-parse reading it replaced, on every form and near miss.
    @Test func legacyNumericMatchesReference() {
        let parts = ["", "0", "00", "0x", "0X", "0x1f", "0XaB", "077", "08", "1", "255", "256", "65535", "65536", "16777215",
                     "16777216", "4294967295", "4294967296", "+1", "-0", "-1", "0x-0", "0+5", "a", "1a", "x", "0xg"]
        var inputs: [String] = parts
        for a in parts { for b in parts { inputs.append("\(a).\(b)") } }
        for a in ["1", "0x7f", "0177", "-0", ""] { for b in parts { inputs.append("\(a).0.\(b)"); inputs.append("\(a).0.0.\(b)") } }
        inputs += ["1.2.3.4.5", "api.example.com", "1.2.3.4.", "...", "."]
        for input in inputs {
            #expect(AddressPolicy.legacyNumericIPv4(input) == referenceLegacyNumericIPv4(input), "\(input)")
        }
    }
}

/// The reading `AddressPolicy.legacyNumericIPv4` had before it became a byte scan.
private func referenceLegacyNumericIPv4(_ host: String) -> IPAddress? {
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

@Suite struct ProxyCredentialsTests {
    @Test func parsesBcryptAndSha256Lines() throws {
        let c = try ProxyCredentials.parse("""
        # users
        alice:$2b$04$JmAexpIJRWRVsAcv54OZO.LwezBIMN4CzuPaGz0zqjU2y8Y1s5XBa
        bob:sha256:2BB80D537B1DA3E38BD30361AA855686BDE0EACD7162FEF6A25FE97BF527A25B

        """, file: "users")
        #expect(c.users["alice"] == .bcrypt("$2b$04$JmAexpIJRWRVsAcv54OZO.LwezBIMN4CzuPaGz0zqjU2y8Y1s5XBa"))
        #expect(c.users["bob"] == .sha256("2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"))
    }

    @Test func refusesPlainTextAndMalformedLines() {
        #expect(throws: ConfigError.self) { try ProxyCredentials.parse("carol:password123", file: "users") }
        #expect(throws: ConfigError.self) { try ProxyCredentials.parse("no-colon", file: "users") }
        #expect(throws: ConfigError.self) { try ProxyCredentials.parse("dave:sha256:abc", file: "users") }
        #expect(throws: ConfigError.self) { try ProxyCredentials.parse("erin:$2b$04$short", file: "users") }
    }

    @Test func basicCredentials() throws {
        let (user, password) = try #require(ProxyCredentials.basicCredentials("Basic YWxpY2U6czNjcmV0"))
        #expect(user == "alice")
        #expect(password == Array("s3cret".utf8))
        #expect(ProxyCredentials.basicCredentials("Bearer abc") == nil)
        #expect(ProxyCredentials.basicCredentials("Basic !!!") == nil)
        #expect(ProxyCredentials.basicCredentials("Basic bm9jb2xvbg==") == nil)  // "nocolon"
        #expect(ProxyCredentials.base64Decode("YQ==") == [0x61])
        #expect(ProxyCredentials.base64Decode("YQ=") == nil)
    }
}
