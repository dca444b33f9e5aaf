import CEventTLS
import ProxyConfig

/// An `SSL_CTX` for connections to upstreams: verification settings and, for mTLS, one client credential.
/// Built once per (credential, trust) pair and shared read-only by every worker.
public final class ClientTLSContext: @unchecked Sendable {
    public let pointer: OpaquePointer
    public let trust: TrustSettings
    /// nil for plain TLS (no client certificate).
    public let credential: Credential?
    public let identityName: String?

    public init(trust: TrustSettings, credential: Credential?, identityName: String?) throws {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else {
            throw TLSSetupError.context(OpenSSLErrors.describe(OpenSSLErrors.drain()))
        }
        self.pointer = ctx
        self.trust = trust
        self.credential = credential
        self.identityName = identityName

        mtls_SSL_CTX_set_default_options(ctx)
        _ = mtls_SSL_CTX_set_min_proto_version(ctx, trust.minTLS == .tls13 ? TLS1_3_VERSION : TLS1_2_VERSION)
        _ = mtls_SSL_CTX_set_mode(ctx, mtls_SSL_MODE_RELEASE_BUFFERS())
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
        if let caFile = trust.caFile {
            guard SSL_CTX_load_verify_locations(ctx, caFile, nil) == 1 else {
                throw TLSSetupError.trustStore(path: caFile, reason: OpenSSLErrors.describe(OpenSSLErrors.drain()))
            }
        } else {
            guard SSL_CTX_set_default_verify_paths(ctx) == 1 else {
                throw TLSSetupError.trustStore(path: nil, reason: OpenSSLErrors.describe(OpenSSLErrors.drain()))
            }
        }
        if let credential {
            guard SSL_CTX_use_certificate(ctx, credential.leaf.pointer) == 1 else {
                throw TLSSetupError.context(OpenSSLErrors.describe(OpenSSLErrors.drain()))
            }
            for intermediate in credential.chain.dropFirst() {
                guard mtls_SSL_CTX_add1_chain_cert(ctx, intermediate.pointer) == 1 else {
                    throw TLSSetupError.context(OpenSSLErrors.describe(OpenSSLErrors.drain()))
                }
            }
            guard SSL_CTX_use_PrivateKey(ctx, credential.key.pointer) == 1, SSL_CTX_check_private_key(ctx) == 1 else {
                throw TLSSetupError.keyMismatch(certPath: credential.source.cert, keyPath: credential.source.key,
                                                subject: credential.leaf.subject)
            }
        }
        _ = OpenSSLErrors.drain()
    }

    deinit { SSL_CTX_free(pointer) }

    /// A new `SSL` for one connection to `host`: SNI for names, and hostname (or IP) verification.
    public func makeSSL(host: String) -> OpaquePointer? {
        guard let ssl = SSL_new(pointer) else { return nil }
        let isIP = IPAddress(host) != nil
        if isIP {
            let param = SSL_get0_param(ssl)
            X509_VERIFY_PARAM_set1_ip_asc(param, host)
        } else {
            _ = mtls_SSL_set_tlsext_host_name(ssl, host)
            SSL_set1_host(ssl, host)
        }
        return ssl
    }
}
