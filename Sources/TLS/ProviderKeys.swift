import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// Keys held by OpenSSL 3 providers (`key = "store:URI"`), e.g. a TPM's through `tpm2-openssl`: the providers of
/// `[tls] providers` are loaded into OpenSSL's default library context once, then the key is opened with
/// OSSL_STORE. The key material stays with the provider; the proxy holds a handle.
public enum ProviderKeys {
    nonisolated(unsafe) private static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()
    nonisolated(unsafe) private static var loaded: [String: OpaquePointer] = [:]
    nonisolated(unsafe) private static var openStores: [OpaquePointer] = []

    /// Loads each provider not loaded yet (they stay loaded: a reload that names fewer keeps the others).
    public static func load(providers: [String]) throws {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        for name in providers where loaded[name] == nil {
            ERR_clear_error()
            guard let provider = OSSL_PROVIDER_load(nil, name) else {
                let text = OpenSSLErrors.describe(OpenSSLErrors.drain())
                throw ProviderLoadError(description: "cannot load the OpenSSL provider \"\(name)\"\(text.isEmpty ? "" : ": \(text)") (Debian: tpm2-openssl for \"tpm2\")")
            }
            loaded[name] = provider
        }
    }

    /// The private key at `uri` (what follows `store:`).
    static func load(uri: String, shownAs text: String, certificate: Certificate) throws -> PrivateKey {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        ERR_clear_error()
        guard let store = OSSL_STORE_open(uri, nil, nil, nil, nil) else {
            let errors = OSSL_errorsText()
            throw TLSSetupError.invalidKey(path: text, reason: "cannot open it\(errors.isEmpty ? "" : ": \(errors)") (are the providers it needs in [tls] providers?)")
        }
        var keep = false
        // A provider may tie the key to the open store (tpm2-openssl flushes the key from the TPM on close):
        // the store of a key in use stays open as long as the process (one per key loaded, reloads included).
        defer { if keep { openStores.append(store) } else { OSSL_STORE_close(store) } }
        while OSSL_STORE_eof(store) == 0 {
            guard let info = OSSL_STORE_load(store) else {
                if OSSL_STORE_error(store) != 0 { break }
                continue
            }
            defer { OSSL_STORE_INFO_free(info) }
            if OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY, let key = OSSL_STORE_INFO_get1_PKEY(info) {
                _ = OpenSSLErrors.drain()
                // TLS contexts hold a front key shaped like the certificate's public key; its signatures are
                // one-shot EVP_PKEY_sign calls with the provider's key (`TokenSigner`), which the TPM provider
                // supports where libssl's own digest-sign path does not.
                guard let shape = X509_get0_pubkey(certificate.pointer), EVP_PKEY_eq(key, shape) == 1 else {
                    EVP_PKEY_free(key)
                    _ = OpenSSLErrors.drain()
                    throw TLSSetupError.keyMismatch(certPath: "(certificate)", keyPath: text, subject: certificate.subject)
                }
                let signer = TokenSigner(providerKey: key, label: text)
                guard let front = TokenSigner.frontKey(for: signer, shapedLike: shape) else {
                    throw TLSSetupError.invalidKey(path: text, reason: "only RSA and EC keys held by a provider are supported")
                }
                keep = true
                return PrivateKey(taking: front, signer: signer)
            }
        }
        let errors = OSSL_errorsText()
        throw TLSSetupError.invalidKey(path: text, reason: "no private key found there\(errors.isEmpty ? "" : ": \(errors)")")
    }

    private static func OSSL_errorsText() -> String {
        OpenSSLErrors.describe(OpenSSLErrors.drain().filter { !$0.isPseudo })
    }
}

public struct ProviderLoadError: Error, CustomStringConvertible {
    public var description: String
}
