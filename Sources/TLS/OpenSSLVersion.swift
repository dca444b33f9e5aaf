import CEventTLS

/// The OpenSSL library the process runs with, e.g. "3.0.19" (from `OpenSSL_version`, not the headers).
public enum OpenSSLVersion {
    public static var current: String {
        guard let text = OpenSSL_version(Int32(OPENSSL_VERSION_STRING)) else { return "unknown" }
        return String(cString: text)
    }
}
