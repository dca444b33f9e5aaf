/// Why a certificate, key or TLS context could not be set up. Turned into a `ConfigError` with the key path by the caller.
public enum TLSSetupError: Error, Equatable, Sendable, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case invalidCertificate(path: String, reason: String)
    case invalidKey(path: String, reason: String)
    case keyMismatch(certPath: String, keyPath: String, subject: String)
    case brokenChain(path: String, position: Int, subject: String, expectedIssuer: String)
    case trustStore(path: String?, reason: String)
    case context(String)
    /// A TLS policy, pin or CRL setting OpenSSL does not accept; `key` is relative to the route or `[upstream]`.
    case policy(key: String, message: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "cannot read \(path): \(reason)"
        case .invalidCertificate(let path, let reason): return "\(path): not a usable certificate: \(reason)"
        case .invalidKey(let path, let reason): return "\(path): not a usable private key: \(reason)"
        case .keyMismatch(let cert, let key, let subject):
            return "the private key in \(key) does not belong to the certificate in \(cert) (\(subject)); pair each certificate with its own key"
        case .brokenChain(let path, let position, let subject, let expectedIssuer):
            return "\(path): certificate \(position) (\(subject)) did not issue the one before it (issued by \(expectedIssuer)); put the leaf first, then each intermediate in order"
        case .trustStore(let path, let reason):
            return path.map { "cannot load CA bundle \($0): \(reason)" } ?? "cannot load the system trust store: \(reason)"
        case .context(let reason): return "cannot create a TLS context: \(reason)"
        case .policy(_, let message): return message
        }
    }
}
