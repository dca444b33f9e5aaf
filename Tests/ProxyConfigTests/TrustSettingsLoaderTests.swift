import Testing
@testable import ProxyConfig

/// 32 bytes of 0x01, base64: a well-formed pin.
private let pinA = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
private let pinB = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="

private func route(_ lines: String) -> String {
    "[[route]]\nhost = \"api.example.com\"\naction = \"tls\"\n\(lines)\n"
}

private func keyOfError(_ text: String) -> String? {
    configError(text).map(\.key)
}

@Suite struct TrustSettingsLoaderTests {
    @Test func defaultPolicyIsStatedAndInherited() throws {
        let c = try load(route(""))
        let t = c.routes[0].trust
        #expect(t.minTLS == .tls12 && t.maxTLS == .tls13)
        #expect(t.ciphers == TLSPolicyDefaults.ciphers)
        #expect(t.cipherSuites == TLSPolicyDefaults.cipherSuites)
        #expect(t.groups == ["X25519", "P-256", "P-384"])
        #expect(t.revocation == .off && t.pins.isEmpty && t.verify == .chain)
        // Only AEAD ciphers with forward secrecy by default.
        #expect(TLSPolicyDefaults.ciphers.allSatisfy { ($0.hasPrefix("ECDHE-") || $0.hasPrefix("DHE-")) && ($0.contains("GCM") || $0.contains("CHACHA20")) })
    }

    @Test func routeOverridesUpstreamPolicy() throws {
        let c = try load("""
        [upstream]
        tls_min_version = "1.3"
        tls_groups = ["X25519"]

        """ + route("tls_max_version = \"1.3\"\ntls_ciphersuites = [\"TLS_AES_256_GCM_SHA384\"]") + """
        [[route]]
        host = "b.example.com"
        action = "tls"
        tls_min_version = "1.2"
        tls_max_version = "1.2"
        tls_ciphers = ["ECDHE-ECDSA-AES128-GCM-SHA256"]
        """)
        #expect(c.upstream.trust.minTLS == .tls13)
        #expect(c.routes[0].trust.minTLS == .tls13 && c.routes[0].trust.groups == ["X25519"])
        #expect(c.routes[0].trust.cipherSuites == ["TLS_AES_256_GCM_SHA384"])
        #expect(c.routes[1].trust.maxTLS == .tls12 && c.routes[1].trust.ciphers == ["ECDHE-ECDSA-AES128-GCM-SHA256"])
        // Different policies are different trust settings: different contexts, pools and sessions.
        #expect(c.routes[0].trust != c.routes[1].trust)
    }

    @Test func policyMistakesNameTheirKey() {
        #expect(keyOfError(route("tls_min_version = \"1.1\"")) == "route[1].tls_min_version")
        #expect(keyOfError(route("tls_min_version = \"1.3\"\ntls_max_version = \"1.2\"")) == "route[1].tls_max_version")
        #expect(keyOfError(route("min_tls = \"1.2\"\ntls_min_version = \"1.2\"")) == "route[1].tls_min_version")
        #expect(keyOfError(route("tls_ciphers = [\"HIGH:!aNULL\"]")) == "route[1].tls_ciphers[1]")
        #expect(keyOfError(route("tls_ciphers = []")) == "route[1].tls_ciphers")
        #expect(keyOfError(route("tls_ciphersuites = []")) == "route[1].tls_ciphersuites")
        #expect(keyOfError("[upstream]\ntls_groups = \"X25519\"\n") == "upstream.tls_groups")
    }

    @Test func aNameListedTwiceIsNamed() {
        // OpenSSL refuses a group list with a repeated name with "unknown OpenSSL error", which was blamed on ca_file.
        #expect(keyOfError("[upstream]\ntls_groups = [\"X25519\", \"X25519\"]\n") == "upstream.tls_groups[2]")
        #expect(keyOfError(route("tls_signature_algorithms = [\"ECDSA+SHA256\", \"ECDSA+SHA256\"]")) == "route[1].tls_signature_algorithms[2]")
        #expect(keyOfError(route("tls_ciphersuites = [\"TLS_AES_128_GCM_SHA256\", \"TLS_AES_128_GCM_SHA256\"]")) == "route[1].tls_ciphersuites[2]")
    }

    @Test func emptyTLS12CiphersNeedTLS13Minimum() throws {
        let c = try load(route("tls_min_version = \"1.3\"\ntls_ciphers = []"))
        #expect(c.routes[0].trust.ciphers.isEmpty)
    }

    @Test func pinsAreDecoded() throws {
        let c = try load(route("pin_spki_sha256 = [\"\(pinA)\", \"\(pinB)\"]\npin_report_only = true"))
        #expect(c.routes[0].trust.pins == [[UInt8](repeating: 1, count: 32), [UInt8](repeating: 2, count: 32)])
        #expect(c.routes[0].trust.pinReportOnly)
    }

    @Test func pinMistakesNameTheirKey() {
        #expect(keyOfError(route("pin_spki_sha256 = [\"\(pinA)\", \"AQID\"]")) == "route[1].pin_spki_sha256[2]")
        #expect(keyOfError(route("pin_spki_sha256 = []")) == "route[1].pin_spki_sha256")
        #expect(keyOfError(route("pin_report_only = true")) == "route[1].pin_report_only")
        #expect(keyOfError(route("verify = \"pin-only\"")) == "route[1].verify")
        #expect(keyOfError(route("verify = \"none\"")) == "route[1].verify")
        #expect(keyOfError(route("verify = \"pin-only\"\npin_spki_sha256 = [\"\(pinA)\"]\npin_report_only = true")) == "route[1].pin_report_only")
        #expect(keyOfError(route("verify = \"pin-only\"\npin_spki_sha256 = [\"\(pinA)\"]\ncrl_files = [\"crl.pem\"]")) == "route[1].revocation")
        // Pins name one service's key: not an [upstream] default.
        #expect(keyOfError("[upstream]\npin_spki_sha256 = [\"\(pinA)\"]\n") == "upstream.pin_spki_sha256")
    }

    @Test func pinOnlyDropsInheritedRevocation() throws {
        let c = try load("[upstream]\ncrl_files = [\"crl.pem\"]\n" + route("verify = \"pin-only\"\npin_spki_sha256 = [\"\(pinA)\"]"))
        #expect(c.upstream.trust.revocation == .soft)
        #expect(c.routes[0].trust.revocation == .off && c.routes[0].trust.crlFiles.isEmpty)
    }

    @Test func revocationModes() throws {
        let c = try load("[upstream]\ncrl_files = [\"crl.pem\"]\nrevocation = \"hard\"\n" + route("") + """
        [[route]]
        host = "b.example.com"
        action = "tls"
        revocation = "off"
        """)
        #expect(c.upstream.trust.crlFiles == ["/etc/mtls-proxy/crl.pem"])
        #expect(c.routes[0].trust.revocation == .hard)
        #expect(c.routes[1].trust.revocation == .off)
        // crl_files alone means soft: a revoked certificate is refused, a stale CRL is allowed and logged.
        #expect(try load(route("crl_files = [\"a.pem\"]")).routes[0].trust.revocation == .soft)
    }

    @Test func crlFetchAloneMeansSoftRevocation() throws {
        let t = try load(route("crl_fetch = true")).routes[0].trust
        #expect(t.crlFetch && t.revocation == .soft && t.crlFiles.isEmpty)
        let hard = try load("[upstream]\ncrl_fetch = true\nrevocation = \"hard\"\n" + route("")).routes[0].trust
        #expect(hard.crlFetch && hard.revocation == .hard)
        #expect(keyOfError(route("crl_fetch = \"yes\"")) == "route[1].crl_fetch")
    }

    @Test func revocationCoversTheChainUnlessTheScopeSaysLeaf() throws {
        #expect(try load(route("crl_fetch = true")).routes[0].trust.revocationScope == .chain)
        let leaf = try load("[upstream]\nrevocation_scope = \"leaf\"\n" + route("crl_files = [\"a.pem\"]")).routes[0].trust
        #expect(leaf.revocationScope == .leaf)
        #expect(keyOfError(route("crl_fetch = true\nrevocation_scope = \"intermediates\"")) == "route[1].revocation_scope")
        #expect(configError(route("crl_fetch = true\nrevocation_scope = \"all\""))?.message.contains("\"chain\"") == true)
    }

    @Test func ocspStapleIsRequestedWithRevocationAndRequiredOnDemand() throws {
        #expect(try !load(route("")).routes[0].trust.wantsOCSPStaple)
        #expect(try load(route("crl_files = [\"a.pem\"]")).routes[0].trust.wantsOCSPStaple)
        let required = try load(route("require_ocsp_staple = true")).routes[0].trust
        #expect(required.requireOCSPStaple && required.wantsOCSPStaple && required.revocation == .off)
        #expect(keyOfError(route("verify = \"pin-only\"\npin_spki_sha256 = [\"\(pinA)\"]\nrequire_ocsp_staple = true")) == "route[1].require_ocsp_staple")
        // Inherited from [upstream], it does not apply to a pin-only route.
        let pinOnly = try load("[upstream]\nrequire_ocsp_staple = true\n" + route("verify = \"pin-only\"\npin_spki_sha256 = [\"\(pinA)\"]")).routes[0].trust
        #expect(!pinOnly.requireOCSPStaple && !pinOnly.wantsOCSPStaple)
    }

    @Test func revocationMistakesNameTheirKey() {
        #expect(keyOfError(route("revocation = \"hard\"")) == "route[1].revocation")
        #expect(keyOfError(route("revocation = \"strict\"\ncrl_files = [\"a.pem\"]")) == "route[1].revocation")
        #expect(keyOfError(route("revocation = \"off\"\ncrl_files = [\"a.pem\"]")) == "route[1].crl_files")
        #expect(keyOfError(route("crl_files = [\"\"]")) == "route[1].crl_files[1]")
    }
}
