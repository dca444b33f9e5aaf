import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// One key on a PKCS#11 token as TLS uses it: the key TLS contexts hold is a front key (the token key's public
/// half under RSA / EC_KEY methods that call `sign`), and this object signs with the engine's key it holds.
///
/// When a signature fails (the token was removed), the token is marked unavailable and the engine key is let
/// go; the next handshake that needs it after a back-off (1 s, doubling to 30 s) restarts the engine and loads
/// the key again: if the token is back, the identity recovers by itself. Between attempts a handshake fails at
/// once, without asking the token. The back-off bounds how often a missing token costs a module restart.
public final class TokenSigner: @unchecked Sendable {
    /// The `pkcs11:` key, loaded through the libp11 engine; nil for a key an OpenSSL 3 provider holds (`store:`).
    public let uri: TokenKeyURI?
    /// How reports name the key: the `pkcs11:` object URI (no query, so no PIN source), or `store:URI`.
    public let keyLabel: String
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// The engine's key (one reference, ours); nil after a failure or an engine restart.
    private var engineKey: OpaquePointer?
    private var availability = TokenAvailability()
    /// The PIN the key was loaded with, read from its pin-source with the config: recovery logs in with it again
    /// (a PIN file changed since takes effect with the config reload it triggers, which checks it first).
    let pin: [UInt8]?

    init(uri: TokenKeyURI, engineKey: OpaquePointer, pin: [UInt8]?) {
        self.uri = uri
        self.pin = pin
        self.keyLabel = uri.objectURI
        self.engineKey = engineKey
        pthread_mutex_init(mutex, nil)
    }

    /// A signer for a key a provider holds (taking the reference): it is kept after a failure and asked again.
    init(providerKey: OpaquePointer, label: String) {
        self.uri = nil
        self.pin = nil
        self.keyLabel = label
        self.engineKey = providerKey
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        if let engineKey { EVP_PKEY_free(engineKey) }
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Whether the last signature (or load) worked.
    public var isAvailable: Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return availability.isAvailable
    }

    /// Why the token is unavailable and since when (monotonic ms), or nil when it is available.
    public var unavailability: (reason: String, sinceMillis: Int, retryAtMillis: Int)? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if case .unavailable(let since, let reason, _, let retry) = availability.state { return (reason, since, retry) }
        return nil
    }

    /// Called by `TokenKeys` with its lock held (no restart can come between the load and this).
    func take(engineKey fresh: OpaquePointer) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if let engineKey { EVP_PKEY_free(engineKey) }
        engineKey = fresh
    }

    /// Called by `TokenKeys` during an engine restart (with `TokenKeys.signing` held alone).
    func forgetEngineKey() {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if let engineKey { EVP_PKEY_free(engineKey) }
        engineKey = nil
    }

    /// A private-key operation, with its input copied (a signature made on a signing thread must not read or
    /// write OpenSSL's buffers, which a connection closed meanwhile would free).
    enum Operation {
        /// RSA with the padding OpenSSL already chose (PKCS#1 type 1, or none: RSA-PSS encoded by OpenSSL).
        case rsaPrivateEncrypt(input: [UInt8], padding: Int32)
        /// RSA PKCS#1 v1.5 over a digest of type `digestNID`.
        case rsaSign(digestNID: Int32, digest: [UInt8])
        case ecdsaSign(digest: [UInt8])
    }

    /// The signature (or RSA output), or nil with an error naming the token's state on OpenSSL's queue. Inside
    /// an OpenSSL ASYNC job (a handshake of a context with `SSL_MODE_ASYNC`) the token is asked on a signing
    /// thread while the job is paused, so the event loop goes on meanwhile; otherwise, here.
    func sign(_ operation: Operation) -> [UInt8]? {
        if let job = ASYNC_get_current_job(), let waitContext = ASYNC_get_wait_ctx(job) {
            return TokenSigningThreads.shared.sign(operation, with: self, pausing: waitContext)
        }
        return signHere(operation).result
    }

    /// Signs on this thread. Returns the result and the error text for OpenSSL's queue when it failed (raised
    /// here when `raise`, else by the caller on the handshake's thread).
    func signHere(_ operation: Operation, raise: Bool = true) -> (result: [UInt8]?, error: String?) {
        let outcome = signWithRecovery(operation)
        if let error = outcome.error, raise { mtls_token_raise(error) }
        return outcome
    }

    private func signWithRecovery(_ operation: Operation) -> (result: [UInt8]?, error: String?) {
        for _ in 0..<2 {
            pthread_rwlock_rdlock(TokenKeys.signing)
            pthread_mutex_lock(mutex)
            let key = engineKey
            if let key { EVP_PKEY_up_ref(key) }  // (a failure on another thread may let the signer's reference go)
            let next = availability.next(at: Self.nowMillis(), holdingKey: key != nil)
            pthread_mutex_unlock(mutex)
            if let key {
                ERR_clear_error()
                let result = uri == nil ? Self.performWithProvider(operation, with: key) : Self.perform(operation, with: key)
                let why = result == nil ? OpenSSLErrors.describe(OpenSSLErrors.drain()) : ""
                EVP_PKEY_free(key)  // before the lock goes: a restart may finalise the module right after
                pthread_rwlock_unlock(TokenKeys.signing)
                if let result {
                    succeeded()
                    return (result, nil)
                }
                failed(why.isEmpty ? "the token did not sign" : why)
                return (nil, "the token did not sign: \(why)")
            }
            pthread_rwlock_unlock(TokenKeys.signing)
            // No key: let go by a restart (load it again), or after a failure (restart once the back-off is over).
            var restartFirst = false, failedAt = 0
            switch next {
            case .wait(let reason, let retryAt):
                return (nil, "the token is unavailable (\(reason)); next attempt in \((retryAt - Self.nowMillis() + 999) / 1000) s")
            case .reload(let restart, let at): (restartFirst, failedAt) = (restart, at)
            case .sign: break  // (not with no key)
            }
            guard let uri else { return (nil, "the key is not loaded") }
            do {
                try TokenKeys.reload(uri, into: self, restart: restartFirst, failedAtMillis: failedAt)
            } catch {
                // Said without the URI's query (module and PIN file): it reaches the client's Proxy-Status.
                let why: String
                switch error as? TLSSetupError {
                case .invalidKey(_, let reason)?: why = reason
                case .unreadable?: why = "cannot read the PIN from its pin-source"
                default: why = "the key could not be loaded again"
                }
                failed(why)
                return (nil, "the token is unavailable: \(why)")
            }
        }
        return (nil, "the token key could not be loaded again")
    }

    /// Provider signatures one at a time: tpm2-openssl keeps one TPM connection (ESYS context) per provider,
    /// which is not safe to use from two threads at once.
    nonisolated(unsafe) private static let providerLock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    /// The operation with a provider's key: one `EVP_PKEY_sign` over the digest (see `mtls_provider_sign`).
    private static func performWithProvider(_ operation: Operation, with key: OpaquePointer) -> [UInt8]? {
        pthread_mutex_lock(providerLock)
        defer { pthread_mutex_unlock(providerLock) }
        let size = Int(EVP_PKEY_get_size(key))
        guard size > 0 else { return nil }
        var out = [UInt8](repeating: 0, count: size)
        var length = size
        let input: [UInt8], digest: String?, padding: Int32
        switch operation {
        case .rsaPrivateEncrypt(let bytes, let p): (input, digest, padding) = (bytes, nil, p)
        case .rsaSign(let nid, let bytes): (input, digest, padding) = (bytes, OBJ_nid2sn(nid).map { String(cString: $0) }, RSA_PKCS1_PADDING)
        case .ecdsaSign(let bytes):
            let names = [20: "SHA1", 28: "SHA224", 32: "SHA256", 48: "SHA384", 64: "SHA512"]
            (input, digest, padding) = (bytes, names[bytes.count], 0)
        }
        let ok = out.withUnsafeMutableBufferPointer { o in
            input.withUnsafeBufferPointer { i in mtls_provider_sign(key, digest, padding, i.baseAddress, i.count, o.baseAddress, &length) }
        }
        guard ok == 1, length <= size else { return nil }
        return Array(out.prefix(length))
    }

    /// The operation with the engine's key (its methods ask the token).
    private static func perform(_ operation: Operation, with key: OpaquePointer) -> [UInt8]? {
        let size = Int(EVP_PKEY_get_size(key))
        guard size > 0 else { return nil }
        var out = [UInt8](repeating: 0, count: size)
        var length: UInt32 = 0
        let ok: Bool = out.withUnsafeMutableBufferPointer { o in
            switch operation {
            case .rsaPrivateEncrypt(let input, let padding):
                let n = input.withUnsafeBufferPointer { mtls_token_rsa_private_encrypt(key, Int32($0.count), $0.baseAddress, o.baseAddress, padding) }
                length = n > 0 ? UInt32(n) : 0
                return n > 0
            case .rsaSign(let nid, let digest):
                return digest.withUnsafeBufferPointer { mtls_token_rsa_sign(key, nid, $0.baseAddress, UInt32($0.count), o.baseAddress, &length) } == 1
            case .ecdsaSign(let digest):
                return digest.withUnsafeBufferPointer { mtls_token_ecdsa_sign(key, $0.baseAddress, Int32($0.count), o.baseAddress, &length) } == 1
            }
        }
        guard ok, Int(length) <= size else { return nil }
        return Array(out.prefix(Int(length)))
    }

    private func succeeded() {
        pthread_mutex_lock(mutex)
        availability.succeeded()
        pthread_mutex_unlock(mutex)
    }

    /// Marks the token unavailable and lets its key go: the next attempt restarts the engine.
    private func failed(_ reason: String) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        availability.failed(reason, at: Self.nowMillis())
        guard uri != nil else { return }  // a provider's key is kept and asked again
        if let engineKey { EVP_PKEY_free(engineKey) }
        engineKey = nil
    }

    public static func nowMillis() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
    }

    // MARK: the front key

    private static let rsaIndex = mtls_rsa_ex_index()
    private static let ecIndex = mtls_ec_ex_index()
    nonisolated(unsafe) private static let rsaMethod = mtls_token_rsa_method(
        { flen, from, to, rsa, padding in
            guard let rsa, let from, let to, flen >= 0, let signer = TokenSigner.owner(rsa: rsa) else { return -1 }
            guard let out = signer.sign(.rsaPrivateEncrypt(input: Array(UnsafeBufferPointer(start: from, count: Int(flen))), padding: padding)) else { return -1 }
            out.withUnsafeBufferPointer { to.update(from: $0.baseAddress!, count: out.count) }
            return Int32(out.count)
        },
        { type, m, mlen, sig, siglen, rsa in
            guard let rsa, let m, let sig, let siglen, let signer = TokenSigner.owner(rsa: rsa) else { return 0 }
            guard let out = signer.sign(.rsaSign(digestNID: type, digest: Array(UnsafeBufferPointer(start: m, count: Int(mlen))))) else { return 0 }
            out.withUnsafeBufferPointer { sig.update(from: $0.baseAddress!, count: out.count) }
            siglen.pointee = UInt32(out.count)
            return 1
        },
        { rsa in
            guard let rsa else { return 1 }
            if let data = mtls_rsa_get_ex(rsa, TokenSigner.rsaIndex) { Unmanaged<TokenSigner>.fromOpaque(data).release() }
            return mtls_rsa_default_finish(rsa)
        })
    nonisolated(unsafe) private static let ecMethod = mtls_token_ec_method(
        { _, dgst, dlen, sig, siglen, _, _, eckey in
            guard let eckey, let dgst, let sig, let siglen, dlen >= 0, let data = mtls_ec_get_ex(eckey, TokenSigner.ecIndex) else { return 0 }
            let signer = Unmanaged<TokenSigner>.fromOpaque(data).takeUnretainedValue()
            guard let out = signer.sign(.ecdsaSign(digest: Array(UnsafeBufferPointer(start: dgst, count: Int(dlen))))) else { return 0 }
            out.withUnsafeBufferPointer { sig.update(from: $0.baseAddress!, count: out.count) }
            siglen.pointee = UInt32(out.count)
            return 1
        },
        { eckey in
            guard let eckey, let data = mtls_ec_get_ex(eckey, TokenSigner.ecIndex) else { return }
            Unmanaged<TokenSigner>.fromOpaque(data).release()
        })

    private static func owner(rsa: OpaquePointer) -> TokenSigner? {
        guard let data = mtls_rsa_get_ex(rsa, rsaIndex) else { return nil }
        return Unmanaged<TokenSigner>.fromOpaque(data).takeUnretainedValue()
    }

    /// A front key for `signer`, the public half of `engineKey` (which the signer holds), retaining the signer
    /// until OpenSSL frees the key. nil for a key type other than RSA and EC.
    static func frontKey(for signer: TokenSigner, shapedLike engineKey: OpaquePointer) -> OpaquePointer? {
        let retained = Unmanaged.passRetained(signer)
        guard let front = mtls_token_front_key(engineKey, rsaMethod, ecMethod, rsaIndex, ecIndex, retained.toOpaque()) else {
            retained.release()
            _ = OpenSSLErrors.drain()
            return nil
        }
        return front
    }
}
