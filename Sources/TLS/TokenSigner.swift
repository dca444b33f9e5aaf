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
    public let uri: TokenKeyURI
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// The engine's key (one reference, ours); nil after a failure or an engine restart.
    private var engineKey: OpaquePointer?
    private var state = State.available
    /// Signature failures since the last success (the back-off grows with them).
    private var failures = 0

    enum State {
        case available
        /// Since when (monotonic ms), why, when the last attempt failed and when to try again.
        case unavailable(sinceMillis: Int, reason: String, lastFailureMillis: Int, retryAtMillis: Int)
    }

    static let firstBackoffMillis = 1000
    static let maxBackoffMillis = 30_000

    init(uri: TokenKeyURI, engineKey: OpaquePointer) {
        self.uri = uri
        self.engineKey = engineKey
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
        if case .available = state { return true }
        return false
    }

    /// Why the token is unavailable and since when (monotonic ms), or nil when it is available.
    public var unavailability: (reason: String, sinceMillis: Int, retryAtMillis: Int)? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if case .unavailable(let since, let reason, _, let retry) = state { return (reason, since, retry) }
        return nil
    }

    /// Called by `TokenKeys` during an engine restart (with `TokenKeys.signing` held alone).
    func forgetEngineKey() {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if let engineKey { EVP_PKEY_free(engineKey) }
        engineKey = nil
    }

    /// Signs with the token key: `operation` gets the engine key and returns whether it worked. On failure an
    /// error naming the token's state is on OpenSSL's queue.
    func sign(_ operation: (OpaquePointer) -> Bool) -> Bool {
        for _ in 0..<2 {
            pthread_rwlock_rdlock(TokenKeys.signing)
            pthread_mutex_lock(mutex)
            let key = engineKey
            let current = state
            pthread_mutex_unlock(mutex)
            if let key {
                ERR_clear_error()
                let ok = operation(key)
                if ok {
                    pthread_rwlock_unlock(TokenKeys.signing)
                    succeeded()
                    return true
                }
                let why = OpenSSLErrors.describe(OpenSSLErrors.drain())
                pthread_rwlock_unlock(TokenKeys.signing)
                failed(why.isEmpty ? "the token did not sign" : why)
                mtls_token_raise("the token did not sign: \(why)")
                return false
            }
            pthread_rwlock_unlock(TokenKeys.signing)
            // No key: let go by a restart (load it again), or after a failure (restart once the back-off is over).
            let now = Self.nowMillis()
            var failedAt = 0
            if case .unavailable(_, let reason, let lastFailure, let retryAt) = current {
                guard now >= retryAt else {
                    mtls_token_raise("the token is unavailable (\(reason)); next attempt in \((retryAt - now + 999) / 1000) s")
                    return false
                }
                failedAt = lastFailure
            }
            do {
                let fresh = try TokenKeys.reload(uri, restart: failedAt != 0, failedAtMillis: failedAt)
                pthread_mutex_lock(mutex)
                if let old = engineKey { EVP_PKEY_free(old) }
                engineKey = fresh
                pthread_mutex_unlock(mutex)
            } catch {
                let why = "\(error)"
                failed(why)
                mtls_token_raise("the token is unavailable: \(why)")
                return false
            }
        }
        mtls_token_raise("the token key could not be loaded again")
        return false
    }

    private func succeeded() {
        pthread_mutex_lock(mutex)
        state = .available
        failures = 0
        pthread_mutex_unlock(mutex)
    }

    /// Marks the token unavailable and lets its key go: the next attempt restarts the engine.
    private func failed(_ reason: String) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        let now = Self.nowMillis()
        let backoff = min(Self.firstBackoffMillis << min(failures, 10), Self.maxBackoffMillis)
        failures += 1
        let since: Int
        if case .unavailable(let s, _, _, _) = state { since = s } else { since = now }
        state = .unavailable(sinceMillis: since, reason: reason, lastFailureMillis: now, retryAtMillis: now + backoff)
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
            guard let rsa, let from, let to, let signer = TokenSigner.owner(rsa: rsa) else { return -1 }
            var n: Int32 = -1
            _ = signer.sign { key in
                n = mtls_token_rsa_private_encrypt(key, flen, from, to, padding)
                return n > 0
            }
            return n
        },
        { type, m, mlen, sig, siglen, rsa in
            guard let rsa, let m, let sig, let siglen, let signer = TokenSigner.owner(rsa: rsa) else { return 0 }
            return signer.sign { key in mtls_token_rsa_sign(key, type, m, mlen, sig, siglen) == 1 } ? 1 : 0
        },
        { rsa in
            guard let rsa else { return 1 }
            if let data = mtls_rsa_get_ex(rsa, TokenSigner.rsaIndex) { Unmanaged<TokenSigner>.fromOpaque(data).release() }
            return mtls_rsa_default_finish(rsa)
        })
    nonisolated(unsafe) private static let ecMethod = mtls_token_ec_method(
        { _, dgst, dlen, sig, siglen, _, _, eckey in
            guard let eckey, let dgst, let sig, let siglen, let data = mtls_ec_get_ex(eckey, TokenSigner.ecIndex) else { return 0 }
            let signer = Unmanaged<TokenSigner>.fromOpaque(data).takeUnretainedValue()
            return signer.sign { key in mtls_token_ecdsa_sign(key, dgst, dlen, sig, siglen) == 1 } ? 1 : 0
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
