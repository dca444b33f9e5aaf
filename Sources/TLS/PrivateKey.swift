import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// A private key, owned.
public final class PrivateKey: @unchecked Sendable {
    public let pointer: OpaquePointer
    /// For a key on a PKCS#11 token: what signs with it (and knows whether the token is there).
    public let tokenSigner: TokenSigner?

    init(taking pointer: OpaquePointer, signer: TokenSigner? = nil) {
        self.pointer = pointer
        self.tokenSigner = signer
    }

    deinit { EVP_PKEY_free(pointer) }

    /// Loads a PEM private key (PKCS#8, traditional RSA or EC, encrypted when `password` is given).
    /// Never prompts on a terminal.
    public static func loadPEM(path: String, password: [UInt8]? = nil) throws -> PrivateKey {
        guard let bio = BIO_new_file(path, "r") else {
            _ = OpenSSLErrors.drain()
            throw TLSSetupError.unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        defer { BIO_free(bio) }
        var passwordBox = PasswordBox(password: password)
        let key = withUnsafeMutablePointer(to: &passwordBox) { box in
            PEM_read_bio_PrivateKey(bio, nil, { buffer, size, _, userdata in
                guard let buffer, let userdata else { return 0 }
                let box = userdata.assumingMemoryBound(to: PasswordBox.self)
                guard let password = box.pointee.password else {
                    box.pointee.asked = true
                    return 0
                }
                let n = min(Int(size), password.count)
                for i in 0..<n { buffer[i] = CChar(bitPattern: password[i]) }
                return Int32(n)
            }, box)
        }
        let errors = OpenSSLErrors.drain()
        guard let key else {
            if passwordBox.asked {
                throw TLSSetupError.invalidKey(path: path, reason: "the key is encrypted and no password was given (set key_password_file or key_password_env)")
            }
            if password != nil, errors.contains(where: { $0.reasonText.contains("bad decrypt") }) {
                throw TLSSetupError.invalidKey(path: path, reason: "wrong password for the encrypted key")
            }
            // OpenSSL 3's decoders say "unsupported" when nothing in the file decodes as a key.
            let noKey = errors.contains { ($0.library == ERR_LIB_PEM && $0.reason == PEM_R_NO_START_LINE) || $0.reasonText == "unsupported" }
            let detail = noKey ? "no PEM private key found (expected a -----BEGIN ... PRIVATE KEY----- block)" : OpenSSLErrors.describe(errors)
            throw TLSSetupError.invalidKey(path: path, reason: detail)
        }
        return PrivateKey(taking: key)
    }

    /// "EC P-256", "RSA 2048", ...
    public var algorithm: String {
        let bits = EVP_PKEY_get_bits(pointer)
        switch EVP_PKEY_get_base_id(pointer) {
        case EVP_PKEY_RSA: return "RSA \(bits)"
        case EVP_PKEY_EC: return "EC \(bits)"
        case EVP_PKEY_ED25519: return "Ed25519"
        default: return "key \(bits) bits"
        }
    }
}

/// The one permission check for every file that holds a private key or its password: identity keys, PKCS#12
/// bundles, key password files and the interception CA's key. The verdict is `KeyFileAccess`'s: readable by
/// everyone, or by a group the proxy does not run with, draws a warning (the file is still used).
public enum KeyFilePermissions {
    /// nil when the file's permissions are fine (or it cannot be examined), else the warning.
    public static func warning(path: String, what: String = "private key") -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        var groups = Set([UInt32(getegid())])
        let count = getgroups(0, nil)
        if count > 0 {
            var list = [gid_t](repeating: 0, count: Int(count))
            let n = getgroups(count, &list)
            if n > 0 { groups.formUnion(list[0..<Int(n)].map { UInt32($0) }) }
        }
        return KeyFileAccess.warning(path: path, what: what, mode: UInt32(st.st_mode), fileGroup: UInt32(st.st_gid),
                                     processGroups: groups)
    }
}

private struct PasswordBox {
    var password: [UInt8]?
    var asked = false
}
