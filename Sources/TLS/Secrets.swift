import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// Reads passwords from where the config says they are: a file (its first line) or an environment variable.
enum Secrets {
    static func read(_ source: SecretSource, for protected: String) throws -> [UInt8] {
        switch source {
        case .environment(let name):
            guard let value = getenv(name) else {
                throw TLSSetupError.invalidKey(path: protected, reason: "the password variable \(name) is not set in the environment")
            }
            return Array(String(cString: value).utf8)
        case .file(let path):
            guard let f = fopen(path, "rb") else {
                throw TLSSetupError.unreadable(path: path, reason: String(cString: strerror(errno)))
            }
            defer { fclose(f) }
            var bytes: [UInt8] = []
            while bytes.count < 4096 {
                let c = fgetc(f)
                if c == EOF || c == 0x0A { break }
                bytes.append(UInt8(truncatingIfNeeded: c))
            }
            if bytes.last == 0x0D { bytes.removeLast() }
            return bytes
        }
    }
}
