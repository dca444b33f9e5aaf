import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// Private keys that stay on a PKCS#11 token, used through OpenSSL's `pkcs11` engine (libp11, Debian
/// `libengine-pkcs11-openssl`). OpenSSL 3.0 (Debian 12) has no PKCS#11 provider of its own and Debian 12 ships
/// none, so the engine is the one interface there; it is loaded at run time, and only when a config names a
/// `pkcs11:` key. The engine holds one PKCS#11 module per process: every token key must name the same
/// `module-path`. The engine (libp11) serialises its use of the module's sessions, so workers may sign at once.
///
/// TLS contexts never hold the engine's keys: they hold a front key per token key (`TokenSigner`), whose
/// signatures the signer makes with the engine's key it holds at the time. When the token goes away, libp11
/// keeps handles that stay stale after it comes back (and SoftHSM needs its module finalised to see it again),
/// so recovery is a restart of the engine: every signer lets its engine key go (`forgetEngineKeys`), the engine's
/// last functional reference is released (libp11 then finalises the module) and it is initialised again; each
/// signer loads its key again at its next signature.
enum TokenKeys {
    /// Engine set-up, key loads and restarts, one at a time (the PIN is an engine setting).
    nonisolated(unsafe) private static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()
    /// Signatures hold it shared; an engine restart holds it alone (no signature uses a key being let go).
    nonisolated(unsafe) static let signing: UnsafeMutablePointer<pthread_rwlock_t> = {
        let l = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)
        pthread_rwlock_init(l, nil)
        return l
    }()
    /// The initialised engine and the module it loaded, once one was asked for.
    nonisolated(unsafe) private static var engine: (pointer: UnsafeMutableRawPointer, module: String?)?
    /// Every signer alive (weakly), so that a restart can take their engine keys away.
    nonisolated(unsafe) private static var signers: [WeakSigner] = []
    /// The PIN each token (by `tokenName`) last loaded a key with. The token stays logged in after that, and
    /// libp11 does not log in again: a different PIN is only tried after an engine restart (`loadEngineKey`).
    nonisolated(unsafe) private static var acceptedPINs: [String: [UInt8]] = [:]

    /// Which token a URI names: its path attributes other than the object's (`object`, `id`, `type`), sorted.
    static func tokenName(_ uri: TokenKeyURI) -> String {
        uri.objectURI.dropFirst("pkcs11:".count).split(separator: ";")
            .filter { a in !["object=", "id=", "type="].contains { a.hasPrefix($0) } }
            .sorted().joined(separator: ";")
    }
    /// Monotonic milliseconds of the last engine restart (0: none yet).
    nonisolated(unsafe) private(set) static var lastRestartMillis = 0

    private struct WeakSigner { weak var signer: TokenSigner? }

    /// A signer for the key `uri` names, its engine key loaded now (so that a wrong PIN or a missing key is a
    /// config error, not a failed handshake later). Errors name the URI as written (it holds no PIN).
    static func load(_ uri: TokenKeyURI) throws -> PrivateKey {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        let pin = try uri.pinSource.map { try Secrets.read($0, for: uri.text) }
        let key = try loadEngineKey(uri, pin: pin, askChangedPIN: true)
        let signer = TokenSigner(uri: uri, engineKey: key, pin: pin)
        guard let front = TokenSigner.frontKey(for: signer, shapedLike: key) else {
            throw TLSSetupError.invalidKey(path: uri.text, reason: "only RSA and EC keys on a token are supported")
        }
        signers.removeAll { $0.signer == nil }
        signers.append(WeakSigner(signer: signer))
        return PrivateKey(taking: front, signer: signer)
    }

    /// The certificate `uri` names, read from the token (a copy: the proxy uses it like one read from a file).
    static func loadCertificate(_ uri: TokenKeyURI) throws -> Certificate {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        let e = try initialisedEngine(module: uri.modulePath, for: uri)
        // Once a key is loaded the token is logged in and the PIN the engine holds is one it accepted: kept.
        if acceptedPINs.isEmpty, let source = uri.pinSource { try setPIN(try Secrets.read(source, for: uri.text), of: uri, on: e) }
        ERR_clear_error()
        guard let x509 = mtls_engine_load_certificate(e, uri.objectURI) else {
            let text = OpenSSLErrors.describe(OpenSSLErrors.drain())
            throw TLSSetupError.invalidCertificate(path: uri.text, reason: "no such certificate on the token (or the token is missing)\(text.isEmpty ? "" : ": \(text)")")
        }
        _ = OpenSSLErrors.drain()
        return Certificate(taking: x509)
    }

    /// The signers whose keys were loaded, for metrics and reports.
    static var liveSigners: [TokenSigner] {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return signers.compactMap(\.signer)
    }

    /// Loads `uri`'s key into a signer that has none (after a restart, or after a failure). With `restart`, the
    /// engine is restarted first unless that happened since `failedAtMillis`. Called without `signing` held.
    static func reload(_ uri: TokenKeyURI, into signer: TokenSigner, restart: Bool, failedAtMillis: Int) throws {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        if restart, lastRestartMillis <= failedAtMillis { restartEngine() }
        signer.take(engineKey: try loadEngineKey(uri, pin: signer.pin, askChangedPIN: false))
    }

    /// Lets every engine key go and restarts the engine, so that libp11 (and the module) look at the tokens
    /// afresh. Holds `signing` alone meanwhile: no signature is under way. Called with `lock` held.
    private static func restartEngine() {
        guard let e = engine?.pointer else { return }
        pthread_rwlock_wrlock(signing)
        for weak in signers { weak.signer?.forgetEngineKey() }
        _ = mtls_engine_finish(e)
        if mtls_engine_init(e) != 1 {
            _ = OpenSSLErrors.drain()
            engine = nil  // set up again, with its error, at the next load
            _ = mtls_engine_free(e)
        }
        lastRestartMillis = TokenSigner.nowMillis()
        pthread_rwlock_unlock(signing)
    }

    /// Sets the engine's PIN. Called with `lock` held.
    private static func setPIN(_ given: [UInt8], of uri: TokenKeyURI, on e: UnsafeMutableRawPointer) throws {
        var pin = given
        defer { for i in pin.indices { pin[i] = 0 } }
        pin.append(0)
        let ok = pin.withUnsafeBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                mtls_engine_ctrl_cmd_string(e, "PIN", $0)
            }
        }
        guard ok == 1 else {
            _ = OpenSSLErrors.drain()
            throw TLSSetupError.invalidKey(path: uri.text, reason: "the pkcs11 engine did not take the PIN")
        }
    }

    /// The engine's key for `uri` (one reference, the caller's), logged in with `pin` (read from the URI's
    /// pin-source by the caller). With `askChangedPIN` (a config load), a PIN other than the one the token is
    /// logged in with restarts the engine first, so that the token is asked with it (else a wrong PIN in a
    /// reloaded config would be taken unasked). Recovery never does: two keys whose URIs name their tokens alike
    /// but hold different PINs would otherwise restart the engine for each other at every signature. Called with
    /// `lock` held.
    private static func loadEngineKey(_ uri: TokenKeyURI, pin: [UInt8]?, askChangedPIN: Bool) throws -> OpaquePointer {
        if askChangedPIN, let pin, let accepted = acceptedPINs[tokenName(uri)], pin != accepted, engine != nil {
            restartEngine()
            acceptedPINs = [:]  // (every token is logged out)
        }
        let e = try initialisedEngine(module: uri.modulePath, for: uri)
        if let pin { try setPIN(pin, of: uri, on: e) }
        ERR_clear_error()
        guard let key = mtls_engine_load_private_key(e, uri.objectURI) else {
            let errors = OpenSSLErrors.drain()
            let text = OpenSSLErrors.describe(errors)
            let reason: String
            if text.contains("Unable to load PKCS#11 module") || text.contains("Unable to load module") {
                reason = "cannot load the PKCS#11 module \(uri.modulePath ?? "(the engine's default)") (is it a PKCS#11 library?)"
            } else if text.contains("PIN_INCORRECT") || text.lowercased().contains("pin incorrect") {
                reason = "the token refused the PIN from \(uri.pinSource.map { "\($0)" } ?? "(no pin-source)")"
            } else if text.contains("PIN_LOCKED") {
                reason = "the token's PIN is locked"
            } else if uri.pinSource == nil {
                reason = "no such key on the token, or the token needs a PIN (add pin-source=file:/path or env:NAME)"
            } else {
                reason = "no such key on the token (or the token is missing)\(text.isEmpty ? "" : ": \(text)")"
            }
            throw TLSSetupError.invalidKey(path: uri.text, reason: reason)
        }
        // libp11 gives each key a reference to the engine (for its own RSA-PSS path, which the signer does not
        // use); dropped, so that the proxy's one reference is the last and a restart can finalise the module.
        _ = mtls_evp_pkey_drop_engine(key)
        _ = OpenSSLErrors.drain()
        if let pin { acceptedPINs[tokenName(uri)] = pin }
        return key
    }

    private static func initialisedEngine(module: String?, for uri: TokenKeyURI) throws -> UnsafeMutableRawPointer {
        if let engine {
            guard engine.module == module || module == nil else {
                throw TLSSetupError.invalidKey(path: uri.text, reason: "one PKCS#11 module per process: another key uses module-path \(engine.module ?? "(the engine's default)")")
            }
            return engine.pointer
        }
        if let module, access(module, R_OK) != 0 {
            throw TLSSetupError.invalidKey(path: uri.text, reason: "cannot read the PKCS#11 module \(module): \(String(cString: strerror(errno)))")
        }
        ERR_clear_error()
        guard let e = mtls_engine_by_id("pkcs11") else {
            _ = OpenSSLErrors.drain()
            throw TLSSetupError.invalidKey(path: uri.text, reason: "OpenSSL's pkcs11 engine is not installed (Debian: libengine-pkcs11-openssl)")
        }
        // libp11 writes its own diagnostics to stderr unless told not to; errors come back through OpenSSL's queue.
        _ = mtls_engine_ctrl_cmd_string(e, "QUIET", nil)
        if let module, mtls_engine_ctrl_cmd_string(e, "MODULE_PATH", module) != 1 {
            _ = OpenSSLErrors.drain()
            _ = mtls_engine_free(e)
            throw TLSSetupError.invalidKey(path: uri.text, reason: "the pkcs11 engine did not take module-path \(module)")
        }
        guard mtls_engine_init(e) == 1 else {
            let text = OpenSSLErrors.describe(OpenSSLErrors.drain())
            _ = mtls_engine_free(e)
            throw TLSSetupError.invalidKey(path: uri.text, reason: "cannot load the PKCS#11 module \(module ?? "(default)")\(text.isEmpty ? "" : ": \(text)")")
        }
        engine = (e, module)
        return e
    }
}

extension PrivateKey {
    /// The key a `pkcs11:` URI names, used where it is (it never leaves the token).
    public static func onToken(_ uri: TokenKeyURI) throws -> PrivateKey {
        try TokenKeys.load(uri)
    }
}
