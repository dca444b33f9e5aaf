import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// An `SSL_CTX` for connections to upstreams: verification settings and, for mTLS, one client credential.
/// Built once per (credential, trust) pair and shared read-only by every worker.
public final class ClientTLSContext: @unchecked Sendable {
    public let pointer: OpaquePointer
    public let trust: TrustSettings
    /// nil for plain TLS (no client certificate).
    public let credential: Credential?
    public let identityName: String?
    /// TLS sessions to resume, by upstream (host, port, dialled address). They belong to this context, so a
    /// session made for one identity (or for none) is never offered under another.
    private var sessions: [String: OpaquePointer] = [:]
    /// For `crl_fetch`: the CRL generation each session was verified under; an older one is not resumed, so
    /// the next connection verifies the server again against the newly fetched CRL.
    private var sessionGenerations: [String: Int] = [:]
    private let sessionsLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// `trust.crlFetch` with revocation on, read once (the pool asks for every connection it hands out).
    public let fetchesCRLs: Bool
    /// The CRLs loaded from `trust.crlFiles` (none when revocation is off).
    public private(set) var crls: [CRLSummary] = []

    public init(trust: TrustSettings, credential: Credential?, identityName: String?) throws {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else {
            throw TLSSetupError.context(OpenSSLErrors.describe(OpenSSLErrors.drain()))
        }
        self.pointer = ctx
        self.trust = trust
        self.credential = credential
        self.identityName = identityName
        self.fetchesCRLs = trust.fetchesCRLs
        pthread_mutex_init(sessionsLock, nil)

        mtls_SSL_CTX_set_default_options(ctx)
        // (A throw from here on frees the SSL_CTX in deinit.)
        try UpstreamTrustSetup.applyPolicy(trust, to: ctx)
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
            // A token key signs on a signing thread while the handshake's ASYNC job waits (TokenSigningThreads).
            if credential.key.tokenSigner != nil { mtls_SSL_CTX_set_mode_async(ctx) }
        }
        crls = try UpstreamTrustSetup.loadCRLs(trust, into: ctx)
        // crl_fetch: each certificate of the chain is checked against the CRLs of its own distribution points too.
        if fetchesCRLs, let store = SSL_CTX_get_cert_store(ctx) { X509_STORE_set_lookup_crls(store, fetchedCRLLookup) }
        // Pins, pin-only and revocation decisions (see `upstreamCertificateVerify`); the context outlives its SSLs.
        SSL_CTX_set_cert_verify_callback(ctx, upstreamCertificateVerify, Unmanaged.passUnretained(self).toOpaque())
        if trust.wantsOCSPStaple {
            _ = mtls_SSL_CTX_set_tlsext_status_cb(ctx, upstreamOCSPStatus)
            _ = mtls_SSL_CTX_set_tlsext_status_arg(ctx, Unmanaged.passUnretained(self).toOpaque())
        }
        // Client-side session caching: OpenSSL hands each new session to the callback, which stores it here.
        _ = mtls_SSL_CTX_set_session_cache_client(ctx)
        // (It finds the connection's `UpstreamTLSSession`, and through it this context, in the SSL's ex_data.)
        SSL_CTX_sess_set_new_cb(ctx, clientNewSessionCallback)
        _ = OpenSSLErrors.drain()
    }

    deinit {
        for session in sessions.values { SSL_SESSION_free(session) }
        SSL_CTX_free(pointer)
        pthread_mutex_destroy(sessionsLock)
        sessionsLock.deallocate()
    }

    /// Offers the last session made with `sessionKey` on `ssl`, if any.
    func resumeSession(_ ssl: OpaquePointer, sessionKey: String) {
        pthread_mutex_lock(sessionsLock)
        defer { pthread_mutex_unlock(sessionsLock) }
        if fetchesCRLs, sessionGenerations[sessionKey] != CRLCache.shared.generation { return }
        if let session = sessions[sessionKey] { SSL_set_session(ssl, session) }
    }

    /// Keeps `session` (taking ownership) as the one to resume for `sessionKey`.
    func storeSession(_ session: OpaquePointer, sessionKey: String, generation: Int = 0) {
        pthread_mutex_lock(sessionsLock)
        defer { pthread_mutex_unlock(sessionsLock) }
        if let old = sessions[sessionKey] { SSL_SESSION_free(old) }
        sessions[sessionKey] = session
        if fetchesCRLs { sessionGenerations[sessionKey] = generation }
    }

    /// A new `SSL` for one connection to `host`: SNI for names, and hostname (or IP) verification.
    /// nil when any of them cannot be set (a name too long for SNI, a NUL in it, no memory): never a connection
    /// without the check. The caller answers 502.
    func makeSSL(host: String) -> OpaquePointer? {
        guard !host.utf8.contains(0), let ssl = SSL_new(pointer) else { return nil }
        let ok: Bool
        if IPAddress(host) != nil {
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1
        } else {
            ok = mtls_SSL_set_tlsext_host_name(ssl, host) == 1 && SSL_set1_host(ssl, host) == 1
        }
        guard ok, !trust.wantsOCSPStaple || mtls_SSL_set_tlsext_status_type_ocsp(ssl) == 1 else {
            _ = OpenSSLErrors.drain()
            SSL_free(ssl)
            return nil
        }
        return ssl
    }
}
