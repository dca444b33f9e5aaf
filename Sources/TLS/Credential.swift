import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// A client certificate chain with its private key, checked to belong together.
public final class Credential: @unchecked Sendable {
    public let source: CertificateSource
    /// Leaf first, then intermediates.
    public let chain: [Certificate]
    public let key: PrivateKey

    public var leaf: Certificate { chain[0] }
    /// The leaf's validity and serial, read from the certificate once (the proxy asks on every request).
    public let validity: CertificateValidity
    public let leafSerialHex: String

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
        self.validity = CertificateValidity(notBefore: chain[0].notBefore, notAfter: chain[0].notAfter)
        self.leafSerialHex = chain[0].serialHex
    }

    /// Loads and checks the files a `CertificateSource` names.
    public static func load(_ source: CertificateSource) throws -> Credential {
        if case .pem(let cert, _, _) = source.files, let token = source.tokenKey {
            // The key stays on the token; the certificate is a file, or read from a token too.
            let chain = try source.tokenCert.map { [try TokenKeys.loadCertificate($0.inheriting(from: token))] }
                ?? Certificate.loadPEMChain(path: cert)
            return try Credential(source: source, chain: chain, key: try TokenKeys.load(token))
        }
        if case .pem(let cert, let key, _) = source.files, let uri = source.storeKey {
            let chain = try source.tokenCert.map { [try TokenKeys.loadCertificate($0)] } ?? Certificate.loadPEMChain(path: cert)
            return try Credential(source: source, chain: chain, key: try ProviderKeys.load(uri: uri, shownAs: key, certificate: chain[0]))
        }
        switch source.files {
        case .pem(let cert, let key, let password):
            let chain = try source.tokenCert.map { [try TokenKeys.loadCertificate($0)] } ?? Certificate.loadPEMChain(path: cert)
            let secret = try password.map { try Secrets.read($0, for: key) }
            let privateKey = try PrivateKey.loadPEM(path: key, password: secret)
            return try Credential(source: source, chain: chain, key: privateKey)
        case .pkcs12(let path, let password):
            let secret = try password.map { try Secrets.read($0, for: path) }
            let (chain, privateKey) = try PKCS12Bundle.load(path: path, password: secret)
            return try Credential(source: source, chain: chain, key: privateKey)
        }
    }

    /// A warning when the key file can be read by others, or by a group the proxy does not run with (it is
    /// still used: secrets mounted by Kubernetes are 0644 by default). See `KeyFileAccess`.
    public var keyPermissionWarning: String? {
        if source.tokenKey != nil || source.storeKey != nil { return nil }  // held by a token or a provider
        return KeyFilePermissions.warning(path: source.key)
    }

    /// The key password file, when the password comes from one (for a token key: its PIN file).
    public var passwordFile: String? {
        if case .file(let path)? = source.tokenKey?.pinSource { return path }
        switch source.files {
        case .pem(_, _, .file(let path)?), .pkcs12(_, .file(let path)?): return path
        default: return nil
        }
    }
}
