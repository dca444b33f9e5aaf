import CEventTLS
import Foundation
import Testing
import ProxyConfig
@testable import TLS

/// The TLS policy's names are checked against this OpenSSL when the context is built, one element at a time
/// (OpenSSL itself ignores unknown names in a list that has one good name), and the error names the element.
@Suite struct UpstreamTrustSetupTests {
    static func trust(_ change: (inout TrustSettings) -> Void) -> TrustSettings {
        var t = TrustSettings(caFile: TestPKI.shared.path("ca.pem"), minTLS: .tls12)
        change(&t)
        return t
    }

    static func policyKey(_ t: TrustSettings) -> String? {
        do {
            _ = try ClientTLSContext(trust: t, credential: nil, identityName: nil)
            return nil
        } catch TLSSetupError.policy(let key, _) {
            return key
        } catch {
            return "other: \(error)"
        }
    }

    @Test func theDefaultPolicyIsAccepted() throws {
        #expect(Self.policyKey(Self.trust { _ in }) == nil)
        #expect(ERR_peek_error() == 0)
    }

    @Test func aTypoInOneElementIsNamed() {
        #expect(Self.policyKey(Self.trust { $0.ciphers = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA265"] }) == "tls_ciphers[2]")
        #expect(Self.policyKey(Self.trust { $0.ciphers = ["HIGH"] }) == "tls_ciphers[1]")  // an alias, not a cipher
        #expect(Self.policyKey(Self.trust { $0.ciphers = ["TLS_AES_128_GCM_SHA256"] }) == "tls_ciphers[1]")  // a 1.3 suite
        #expect(Self.policyKey(Self.trust { $0.cipherSuites = ["TLS_AES_128_GCM_SHA256", "TLS_AES_512_GCM"] }) == "tls_ciphersuites[2]")
        #expect(Self.policyKey(Self.trust { $0.groups = ["X25519", "P-265"] }) == "tls_groups[2]")
        #expect(Self.policyKey(Self.trust { $0.signatureAlgorithms = ["ECDSA+SHA256", "ECDSA+SHA257"] }) == "tls_signature_algorithms[2]")
    }

    @Test func anUnreadableOrEmptyCRLFileIsNamed() throws {
        let dir = NSTemporaryDirectory() + "crl-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "not a crl\n".write(toFile: dir + "/garbage.pem", atomically: true, encoding: .utf8)
        #expect(Self.policyKey(Self.trust { $0.revocation = .hard; $0.crlFiles = [dir + "/missing.pem"] }) == "crl_files[1]")
        #expect(Self.policyKey(Self.trust { $0.revocation = .soft; $0.crlFiles = [dir + "/garbage.pem"] }) == "crl_files[1]")
        // Revocation off: the files are not read.
        #expect(Self.policyKey(Self.trust { $0.revocation = .off; $0.crlFiles = [dir + "/missing.pem"] }) == nil)
    }

    @Test func pinsArePrintedAsRFC7469() throws {
        let cert = try #require(try Certificate.loadPEMChain(path: TestPKI.shared.path("ca.pem")).first)
        let pin = cert.spkiPin
        #expect(pin.count == 44 && pin.hasSuffix("="))
        #expect(SPKIPin.base64([0xFF, 0xEE]) == "/+4=" && SPKIPin.base64([1, 2, 3]) == "AQID" && SPKIPin.base64([1]) == "AQ==")
    }
}
