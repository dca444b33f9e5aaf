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
enum TokenKeys {
    nonisolated(unsafe) private static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()
    /// The initialised engine and the module it loaded, once one was asked for.
    nonisolated(unsafe) private static var engine: (pointer: UnsafeMutableRawPointer, module: String?)?

    /// Loads the key `uri` names, with the PIN from its `pin-source`. Errors name the URI as written (it holds
    /// no PIN) and never the PIN.
    static func load(_ uri: TokenKeyURI) throws -> PrivateKey {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        let e = try initialisedEngine(module: uri.modulePath, for: uri)
        if let source = uri.pinSource {
            var pin = try Secrets.read(source, for: uri.text)
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
        return PrivateKey(taking: key)
    }

    private static func initialisedEngine(module: String?, for uri: TokenKeyURI) throws -> UnsafeMutableRawPointer {
        if let engine {
            guard engine.module == module else {
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
