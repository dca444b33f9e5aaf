import Foundation
import Testing
import ProxyConfig
@testable import Reports

@Suite struct CheckReportTests {
    private let day = 86_400

    @Test func verdictsCarryTheExitCodesOfCheck() {
        #expect(Verdict(worst: .ok, warnDays: 30).exitCode == 0)
        #expect(Verdict(status: .configError, warnDays: 30).exitCode == 1)
        #expect(Verdict(worst: .expiringWithoutSuccessor, warnDays: 30).exitCode == 2)
        #expect(Verdict(worst: .noValidCertificate, warnDays: 30).exitCode == 3)
    }

    /// `check --fail-on error` is a start-up gate: it exits non-zero only for what `run` refuses.
    @Test func failOnErrorExitsNonZeroOnlyForAConfigError() {
        #expect(Verdict(worst: .ok, warnDays: 30, failOn: .error).exitCode == 0)
        #expect(Verdict(worst: .expiringWithoutSuccessor, warnDays: 30, failOn: .error).exitCode == 0)
        #expect(Verdict(worst: .noValidCertificate, warnDays: 30, failOn: .error).exitCode == 0)
        #expect(Verdict(status: .configError, warnDays: 30, failOn: .error).exitCode == 1)
        #expect(Verdict(worst: .noValidCertificate, warnDays: 30, failOn: .error).status == .noValidCertificate)
        #expect(Verdict(worst: .noValidCertificate, warnDays: 30, failOn: .warning).exitCode == 3)
    }

    @Test func certificateStates() {
        let now = 1_000 * day
        let certificates = [CertificateValidity(notBefore: now - 400 * day, notAfter: now - day),   // expired
                            CertificateValidity(notBefore: now - 300 * day, notAfter: now + 65 * day), // active
                            CertificateValidity(notBefore: now + 20 * day, notAfter: now + 385 * day), // next
                            CertificateValidity(notBefore: now + 40 * day, notAfter: now + 405 * day)] // staged
        let status = IdentityStatus.evaluate(certificates, at: now, warnDays: 30)
        let states = certificates.indices.map { CertificateReport.state(of: $0, certificates, status: status, now: now) }
        #expect(states == [.expired, .active, .next, .staged])
    }

    @Test func daysLeftRoundsDownAndIsNegativeOnceExpired() {
        #expect(wholeDays(day * 3 + 5) == 3)
        #expect(wholeDays(0) == 0)
        #expect(wholeDays(-1) == -1)
        #expect(wholeDays(-day - 1) == -2)
    }

    /// The field names documented in docs/check-json.md, checked on the encoded JSON.
    @Test func encodedFieldNamesAreTheDocumentedOnes() throws {
        let now = 1_000 * day
        let facts = CertificateFacts(subject: "CN=a", issuer: "CN=ca", serial: "0A", notBefore: now - day, notAfter: now + 10 * day, sha256: "AB:CD")
        let status = IdentityStatus.evaluate([facts.validity], at: now, warnDays: 30)
        let identity = IdentityReport(name: "us", prefer: "newest", status: status, certificates: [
            CertificateReport(index: 1, state: .active, facts: facts, file: "/x/a.pem", takesOverAt: nil, now: now)])
        let route = Route(index: 1, host: HostPattern.parse("api.example.com")!, action: .mtls(identity: "us"),
                          trust: UpstreamSettings().trust, timeouts: UpstreamSettings().timeouts)
        let report = CheckReport(generatedAt: UTCTime.rfc3339(now), config: "proxy.conf", valid: true, listen: "127.0.0.1:3128",
                                 unmatched: "deny", identities: [identity],
                                 localCA: LocalCAReport(certFile: "ca.pem", keyFile: "ca.key", facts: facts, error: nil, now: now),
                                 routes: [RouteReport(route)], verdict: Verdict(worst: status.health, warnDays: 30))
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let json = try JSONSerialization.jsonObject(with: encoder.encode(report))
        let object = try #require(json as? [String: Any])
        #expect(Set(object.keys) == ["schema", "generated_at", "config", "valid", "errors", "listen", "unmatched", "identities",
                                     "local_ca", "routes", "unused_identities", "warnings", "verdict"])
        #expect(object["schema"] as? String == "mtls-proxy.check/1")
        let verdict = try #require(object["verdict"] as? [String: Any])
        #expect(Set(verdict.keys) == ["status", "exit_code", "warn_days", "fail_on"])
        let identities = try #require(object["identities"] as? [[String: Any]])
        #expect(Set(identities[0].keys) == ["name", "prefer", "health", "active", "days_left", "next", "certificates"])
        let certificate = try #require((identities[0]["certificates"] as? [[String: Any]])?.first)
        #expect(Set(certificate.keys) == ["index", "state", "subject", "issuer", "serial", "not_before", "not_after",
                                          "not_before_unix", "not_after_unix", "days_left", "sha256", "file"])
        #expect(certificate["not_after"] as? String == UTCTime.rfc3339(now + 10 * day))
        #expect(certificate["days_left"] as? Int == 10)
        let routes = try #require(object["routes"] as? [[String: Any]])
        #expect(Set(routes[0].keys) == ["index", "label", "host", "action", "identity", "protocol", "trust"])
        #expect(routes[0]["protocol"] as? String == "http/1.1")
        let ca = try #require(object["local_ca"] as? [String: Any])
        #expect(Set(ca.keys) == ["cert_file", "key_file", "subject", "not_before", "not_after", "not_after_unix", "days_left", "sha256"])
    }

    /// Each route's trust settings, as docs/check-json.md names them: the defaults written out, and a route
    /// with pins, pin-only, hard revocation with its CRLs, a required staple and its own TLS policy.
    @Test func routeTrustFieldsAreTheDocumentedOnes() throws {
        let now = 1_000 * day
        let defaults = Route(index: 1, host: HostPattern.parse("api.example.com")!, action: .mtls(identity: "us"),
                             trust: UpstreamSettings().trust, timeouts: UpstreamSettings().timeouts)
        var trust = UpstreamSettings().trust
        trust.caFile = "/etc/mtls-proxy/bank-ca.pem"
        trust.pins = [[UInt8](repeating: 0, count: 32), [UInt8](repeating: 0xFF, count: 32)]
        trust.pinReportOnly = true
        trust.revocation = .hard
        trust.crlFiles = ["/etc/mtls-proxy/crl/bank.crl"]
        trust.crlFetch = true
        trust.revocationScope = .leaf
        trust.requireOCSPStaple = true
        trust.maxTLS = .tls12
        trust.ciphers = ["ECDHE-ECDSA-AES256-GCM-SHA384"]
        trust.signatureAlgorithms = ["ECDSA+SHA256"]
        let strict = Route(index: 2, host: HostPattern.parse("pay.example.com")!, action: .tls, trust: trust,
                           timeouts: UpstreamSettings().timeouts)
        let denied = Route(index: 3, host: HostPattern.parse("*")!, action: .deny, trust: UpstreamSettings().trust,
                           timeouts: UpstreamSettings().timeouts)
        let crl = CRLReport(file: "/etc/mtls-proxy/crl/bank.crl", issuer: "CN=Bank CA", revoked: 3, nextUpdate: now - 60, now: now)
        let report = CheckReport(generatedAt: UTCTime.rfc3339(now), config: "proxy.conf", valid: true,
                                 routes: [RouteReport(defaults), RouteReport(strict, crls: [crl]), RouteReport(denied)],
                                 verdict: Verdict(worst: .ok, warnDays: 30))
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let object = try #require(try JSONSerialization.jsonObject(with: encoder.encode(report)) as? [String: Any])
        let routes = try #require(object["routes"] as? [[String: Any]])
        #expect(routes[2]["trust"] == nil)  // deny: no upstream to trust

        let plain = try #require(routes[0]["trust"] as? [String: Any])
        #expect(Set(plain.keys) == ["verify", "pins", "pin_report_only", "revocation", "revocation_scope", "crl_files", "crl_fetch", "crls",
                                    "require_ocsp_staple", "ocsp_staple", "tls_policy"])  // no ca_file: the system store
        #expect(plain["verify"] as? String == "chain" && plain["revocation"] as? String == "off")
        #expect(plain["revocation_scope"] as? String == "chain")
        #expect(plain["ocsp_staple"] as? String == "not_requested")
        let policy = try #require(plain["tls_policy"] as? [String: Any])
        #expect(Set(policy.keys) == ["min_version", "max_version", "ciphers", "ciphersuites", "groups", "signature_algorithms"])
        #expect(policy["min_version"] as? String == "1.2" && policy["max_version"] as? String == "1.3")
        #expect(policy["ciphers"] as? [String] == TLSPolicyDefaults.ciphers)
        #expect(policy["groups"] as? [String] == TLSPolicyDefaults.groups)

        let set = try #require(routes[1]["trust"] as? [String: Any])
        #expect(set["ca_file"] as? String == "/etc/mtls-proxy/bank-ca.pem")
        #expect(set["pins"] as? [String] == ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "//////////////////////////////////////////8="])
        #expect(set["pin_report_only"] as? Bool == true)
        #expect(set["revocation"] as? String == "hard" && set["crl_fetch"] as? Bool == true)
        #expect(set["revocation_scope"] as? String == "leaf")
        #expect(set["crl_files"] as? [String] == ["/etc/mtls-proxy/crl/bank.crl"])
        #expect(set["require_ocsp_staple"] as? Bool == true && set["ocsp_staple"] as? String == "required")
        let crls = try #require(set["crls"] as? [[String: Any]])
        #expect(Set(crls[0].keys) == ["file", "issuer", "revoked", "next_update", "next_update_unix", "stale"])
        #expect(crls[0]["stale"] as? Bool == true && crls[0]["revoked"] as? Int == 3)
        let strictPolicy = try #require(set["tls_policy"] as? [String: Any])
        #expect(strictPolicy["max_version"] as? String == "1.2")
        #expect(strictPolicy["ciphers"] as? [String] == ["ECDHE-ECDSA-AES256-GCM-SHA384"])
        #expect(strictPolicy["signature_algorithms"] as? [String] == ["ECDSA+SHA256"])
    }

    @Test func rfc3339() {
        #expect(UTCTime.rfc3339(0) == "1970-01-01T00:00:00Z")
        #expect(UTCTime.rfc3339(1_800_000_000) == "2027-01-15T08:00:00Z")
    }

    /// A route whose revocation is off checks no CRL: its report says it fetches none and lists no CRL file, even
    /// when `[upstream]` sets crl_fetch and crl_files that the route turns off (or the route sets crl_fetch with
    /// revocation = "off"); a route that inherits them with revocation on shows them.
    @Test func aRouteWithRevocationOffShowsNoCRLSource() throws {
        let config = try ConfigLoader.parse("""
            [upstream]
            crl_fetch = true
            crl_files = ["bank.crl"]
            [[route]]
            host = "off.example.com"
            action = "tls"
            revocation = "off"
            [[route]]
            host = "fetch-off.example.com"
            action = "tls"
            crl_fetch = true
            revocation = "off"
            [[route]]
            host = "on.example.com"
            action = "tls"
            revocation = "hard"
            """, file: "proxy.conf", baseDirectory: "/etc/mtls-proxy")
        let trust = config.routes.map { RouteReport($0).trust! }
        for off in trust[0...1] {
            #expect(off.revocation == "off")
            #expect(off.crlFetch == false, "crl_fetch shown true on a route whose revocation is off")
            #expect(off.crlFiles == [], "crl_files shown on a route whose revocation is off")
        }
        #expect(trust[2].revocation == "hard" && trust[2].crlFetch && trust[2].crlFiles == ["/etc/mtls-proxy/bank.crl"])
    }
}
