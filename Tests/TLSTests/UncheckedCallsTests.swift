import CEventTLS
import Foundation
import Testing
import ProxyConfig
@testable import TLS

/// The C calls the security model rests on are checked: a host that cannot be set for SNI or hostname
/// verification gives no SSL at all (the proxy answers 502), and minting never leaves a certificate
/// half-made or an OpenSSL error queued behind it.
@Suite struct UncheckedCallsTests {
    static func context() throws -> ClientTLSContext {
        try ClientTLSContext(trust: TrustSettings(caFile: TestPKI.shared.path("ca.pem"), minTLS: .tls12), credential: nil, identityName: nil)
    }

    @Test func aNameTooLongForSNIGivesNoConnection() throws {
        let ctx = try Self.context()
        let host = String(repeating: "a", count: 60) + "." + String(repeating: "b", count: 60) + "." + String(repeating: "c", count: 60)
            + "." + String(repeating: "d", count: 60) + "." + String(repeating: "e", count: 60) + ".example.com"
        #expect(ctx.makeSSL(host: host) == nil)
        #expect(ERR_peek_error() == 0)
    }

    @Test func aNameWithANulGivesNoConnection() throws {
        let ctx = try Self.context()
        #expect(ctx.makeSSL(host: "api.mygreatbank.test\u{0}.evil.example") == nil)
    }

    @Test func anOrdinaryNameAndAnAddressGetTheirChecks() throws {
        let ctx = try Self.context()
        let ssl = try #require(ctx.makeSSL(host: "api.mygreatbank.test"))
        #expect(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name).map { String(cString: $0) } == "api.mygreatbank.test")
        SSL_free(ssl)
        let ip = try #require(ctx.makeSSL(host: "127.0.0.1"))
        SSL_free(ip)
    }

    static func localCA() throws -> LocalCA {
        let dir = TestPKI.shared.path("localca-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return try LocalCA.create(certPath: "\(dir)/ca.pem", keyPath: "\(dir)/ca.key")
    }

    @Test func aLeafForALongNameIsComplete() throws {
        let ca = try Self.localCA()
        _ = OpenSSLErrors.drain()
        let host = String(repeating: "x", count: 70) + ".mygreatbank.test"
        let (leaf, key) = try ca.mintLeaf(host: host, validitySeconds: 3600)
        #expect(ERR_peek_error() == 0, "minting left an OpenSSL error queued: \(OpenSSLErrors.describe(OpenSSLErrors.drain()))")
        #expect(X509_check_host(leaf.pointer, host, host.utf8.count, 0, nil) == 1)
        #expect(X509_check_private_key(leaf.pointer, key.pointer) == 1)
        #expect(leaf.isIssued(by: ca.certificate))
    }

    @Test func aLeafForAHostMintingCannotExpressIsRefused() throws {
        let ca = try Self.localCA()
        // A comma would split the subjectAltName text into two entries.
        #expect(throws: TLSSetupError.self) { _ = try ca.mintLeaf(host: "a.example,DNS:b.example", validitySeconds: 3600) }
        #expect(ERR_peek_error() == 0)
    }
}
