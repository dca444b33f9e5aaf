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
