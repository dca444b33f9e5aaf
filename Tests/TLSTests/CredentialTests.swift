import Foundation
import Testing
import ProxyConfig
@testable import TLS

@Suite(.serialized) struct CredentialTests {
    let pki = TestPKI.shared

    @Test func loadsACertificateAndReadsItsFields() throws {
        let chain = try Certificate.loadPEMChain(path: pki.path("fusion-us.pem"))
        #expect(chain.count == 1)
        let leaf = chain[0]
        #expect(leaf.subject == "CN=fusion-us,O=mtls-proxy test")
        #expect(leaf.issuer == "CN=mtls-proxy test CA,O=mtls-proxy test")
        #expect(leaf.notAfter - leaf.notBefore == 365 * 86_400)

        let serial = TestPKI.shell("openssl x509 -in '\(pki.path("fusion-us.pem"))' -noout -serial").output
        #expect(serial.trimmingCharacters(in: .whitespacesAndNewlines) == "serial=\(leaf.serialHex)")
        let fingerprint = TestPKI.shell("openssl x509 -in '\(pki.path("fusion-us.pem"))' -noout -fingerprint -sha256").output
        #expect(fingerprint.trimmingCharacters(in: .whitespacesAndNewlines).hasSuffix("=\(leaf.sha256Fingerprint)"))
        #expect(leaf.pem == pki.read("fusion-us.pem"))
    }

    @Test func loadsAMatchingCredential() throws {
        let source = CertificateSource(cert: pki.path("fusion-us.pem"), key: pki.path("fusion-us.key"), configKey: "identities.us")
        let credential = try Credential.load(source)
        #expect(credential.key.algorithm == "EC 256")
        #expect(credential.validity.isValid(at: Int(Date().timeIntervalSince1970)))
        // Read once when the credential is made, the same as the leaf says.
        #expect(credential.validity == CertificateValidity(notBefore: credential.leaf.notBefore, notAfter: credential.leaf.notAfter))
        #expect(credential.leafSerialHex == credential.leaf.serialHex && !credential.leafSerialHex.isEmpty)
    }

    @Test func reportsAKeyThatDoesNotBelongToTheCertificate() {
        let source = CertificateSource(cert: pki.path("fusion-us.pem"), key: pki.path("fusion-eu.key"), configKey: "identities.us")
        #expect {
            try Credential.load(source)
        } throws: { error in
            guard case TLSSetupError.keyMismatch(let cert, let key, let subject) = error else { return false }
            return cert.hasSuffix("fusion-us.pem") && key.hasSuffix("fusion-eu.key") && subject.contains("fusion-us")
        }
    }

    @Test func reportsAChainInTheWrongOrder() throws {
        let reversed = pki.write("reversed.pem", pki.read("ca.pem") + pki.read("fusion-us.pem"))
        let source = CertificateSource(cert: reversed, key: pki.path("fusion-us.key"), configKey: "identities.us")
        // The CA comes first, so the key does not match the first certificate...
        #expect(throws: TLSSetupError.self) { try Credential.load(source) }
        // ...and a leaf followed by a certificate that did not issue it is a broken chain.
        let wrongIssuer = pki.write("wrong-issuer.pem", pki.read("fusion-us.pem") + pki.read("rogue-ca.pem"))
        #expect {
            try Credential.load(CertificateSource(cert: wrongIssuer, key: pki.path("fusion-us.key"), configKey: "identities.us"))
        } throws: { error in
            if case TLSSetupError.brokenChain(_, 2, let subject, _) = error { return subject.contains("untrusted test CA") }
            return false
        }
        // Leaf then its issuer is fine.
        let good = pki.write("good-chain.pem", pki.read("fusion-us.pem") + pki.read("ca.pem"))
        let credential = try Credential.load(CertificateSource(cert: good, key: pki.path("fusion-us.key"), configKey: "identities.us"))
        #expect(credential.chain.count == 2)
    }

    @Test func reportsMissingAndGarbageFiles() {
        #expect {
            try Certificate.loadPEMChain(path: pki.path("does-not-exist.pem"))
        } throws: { error in
            if case TLSSetupError.unreadable(_, let reason) = error { return reason.contains("No such file") }
            return false
        }
        let garbage = pki.write("garbage.pem", "this is not a certificate\n")
        #expect {
            try Certificate.loadPEMChain(path: garbage)
        } throws: { error in
            if case TLSSetupError.invalidCertificate(_, let reason) = error { return reason.contains("no PEM certificate") }
            return false
        }
        #expect {
            try PrivateKey.loadPEM(path: pki.path("fusion-us.pem"))
        } throws: { error in
            if case TLSSetupError.invalidKey(_, let reason) = error { return reason.contains("no PEM private key") }
            return false
        }
    }

    @Test func encryptedKeysNeedTheirPassword() throws {
        let encrypted = pki.path("encrypted.key")
        TestPKI.shell("openssl pkey -in '\(pki.path("fusion-us.key"))' -aes256 -passout pass:s3cret -out '\(encrypted)'")
        #expect {
            try PrivateKey.loadPEM(path: encrypted)
        } throws: { error in
            if case TLSSetupError.invalidKey(_, let reason) = error { return reason.contains("encrypted") }
            return false
        }
        #expect(throws: TLSSetupError.self) { try PrivateKey.loadPEM(path: encrypted, password: Array("wrong".utf8)) }
        let key = try PrivateKey.loadPEM(path: encrypted, password: Array("s3cret".utf8))
        #expect(key.algorithm == "EC 256")
    }

    @Test func contextReportsAnUnreadableCABundle() {
        #expect {
            try ClientTLSContext(trust: TrustSettings(caFile: pki.path("missing-ca.pem"), minTLS: .tls12), credential: nil, identityName: nil)
        } throws: { error in
            if case TLSSetupError.trustStore(let path, _) = error { return path?.hasSuffix("missing-ca.pem") == true }
            return false
        }
    }

    @Test func contextPresentsTheCredential() throws {
        let credential = try Credential.load(CertificateSource(cert: pki.path("fusion-us.pem"), key: pki.path("fusion-us.key"), configKey: "identities.us"))
        let ctx = try ClientTLSContext(trust: TrustSettings(caFile: pki.path("ca.pem"), minTLS: .tls12), credential: credential, identityName: "us")
        #expect(ctx.identityName == "us")
        #expect(ctx.makeSSL(host: "api.mygreatbank.test") != nil)
    }
}
