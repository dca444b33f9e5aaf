import CEventTLS
import ProxyConfig

/// A client certificate chain with its private key, checked to belong together.
public final class Credential: @unchecked Sendable {
    public let source: CertificateSource
    /// Leaf first, then intermediates.
    public let chain: [Certificate]
    public let key: PrivateKey

    public var leaf: Certificate { chain[0] }
    public var validity: CertificateValidity { CertificateValidity(notBefore: leaf.notBefore, notAfter: leaf.notAfter) }

    public init(source: CertificateSource, chain: [Certificate], key: PrivateKey) throws {
        guard !chain.isEmpty else { throw TLSSetupError.invalidCertificate(path: source.cert, reason: "empty chain") }
        guard X509_check_private_key(chain[0].pointer, key.pointer) == 1 else {
            _ = OpenSSLErrors.drain()
            throw TLSSetupError.keyMismatch(certPath: source.cert, keyPath: source.key, subject: chain[0].subject)
        }
        for i in 1..<max(chain.count, 1) where !chain[i - 1].isIssued(by: chain[i]) {
            _ = OpenSSLErrors.drain()
            throw TLSSetupError.brokenChain(path: source.cert, position: i + 1, subject: chain[i].subject,
                                            expectedIssuer: chain[i - 1].issuer)
        }
        self.source = source
        self.chain = chain
        self.key = key
    }

    /// Loads and checks the files a `CertificateSource` names.
    public static func load(_ source: CertificateSource) throws -> Credential {
        let chain = try Certificate.loadPEMChain(path: source.cert)
        let key = try PrivateKey.loadPEM(path: source.key)
        return try Credential(source: source, chain: chain, key: key)
    }
}
