import CEventTLS

// issue 15 point 8: the checks LocalCA's minting uses, kept apart from LocalCA.swift.
extension Minting {
    /// A failed OpenSSL call in minting throws with its queued errors (and leaves none behind).
    static func check(_ ok: Bool, _ what: String) throws {
        guard ok else { throw TLSSetupError.context("cannot mint a certificate: \(what) failed: \(OpenSSLErrors.describe(OpenSSLErrors.drain()))") }
    }

    /// An IP address, or a DNS name of letters, digits, '-', '.', '_' and '*' (so the subjectAltName
    /// text cannot be read as more than one entry), at most 253 characters.
    static func isExpressible(_ host: String) -> Bool {
        if IPAddressCheck.isIP(host) { return true }
        return !host.isEmpty && host.utf8.count <= 253 && host.utf8.allSatisfy { c in
            (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || (c >= 0x30 && c <= 0x39) || c == 0x2D || c == 0x2E || c == 0x2A || c == 0x5F
        }
    }
}
