import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// Checks `Proxy-Authorization: Basic` against the users of `[proxy] auth_file`. bcrypt is slow on purpose, so
/// each worker remembers the header values it has accepted (a bounded set) instead of hashing on every request.
final class ProxyAuthenticator {
    let users: ProxyCredentials
    private var accepted = Set<String>()

    init(users: ProxyCredentials) { self.users = users }

    func allows(_ header: String?) -> Bool {
        guard let header else { return false }
        if accepted.contains(header) { return true }
        guard let (user, password) = ProxyCredentials.basicCredentials(header), let hash = users.users[user],
              !password.contains(0) else { return false }
        let ok: Bool
        switch hash {
        case .sha256(let hex): ok = constantTimeEqual(Self.sha256Hex(password), hex)
        case .bcrypt(let stored): ok = Self.bcrypt(password, stored).map { constantTimeEqual($0, stored) } ?? false
        }
        if ok {
            if accepted.count >= 1024 { accepted.removeAll() }
            accepted.insert(header)
        }
        return ok
    }

    static func sha256Hex(_ bytes: [UInt8]) -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        _ = bytes.withUnsafeBytes { EVP_Digest($0.baseAddress, $0.count, &digest, &length, EVP_sha256(), nil) }
        return digest.map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined()
    }

    /// crypt(3) with the stored hash as its salt: libcrypt computes bcrypt ($2a$/$2b$/$2y$).
    static func bcrypt(_ password: [UInt8], _ stored: String) -> String? {
        let data = UnsafeMutablePointer<crypt_data>.allocate(capacity: 1)
        defer { data.deallocate() }
        memset(data, 0, MemoryLayout<crypt_data>.size)
        let key = password.map { CChar(bitPattern: $0) } + [0]
        guard let result = crypt_r(key, stored, data) else { return nil }
        return String(cString: result)
    }
}

func constantTimeEqual(_ a: String, _ b: String) -> Bool {
    let x = Array(a.utf8), y = Array(b.utf8)
    guard x.count == y.count else { return false }
    var difference: UInt8 = 0
    for i in 0..<x.count { difference |= x[i] ^ y[i] }
    return difference == 0
}
