/// How `explain`, `check` and `/readyz?verbose` describe a route's trust settings, in words.
public enum TrustDescription {
    public static func policy(_ t: TrustSettings) -> String {
        var parts = ["TLS \(t.minTLS.rawValue)–\(t.maxTLS.rawValue)"]
        parts.append(t.ciphers == TLSPolicyDefaults.ciphers ? "TLS 1.2 ciphers: default (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305)" : "TLS 1.2 ciphers: \(t.ciphers.isEmpty ? "none" : t.ciphers.joined(separator: ":"))")
        parts.append(t.cipherSuites == TLSPolicyDefaults.cipherSuites ? "TLS 1.3 suites: default" : "TLS 1.3 suites: \(t.cipherSuites.joined(separator: ":"))")
        parts.append("groups: \(t.groups.joined(separator: ":"))")
        if !t.signatureAlgorithms.isEmpty { parts.append("signature algorithms: \(t.signatureAlgorithms.joined(separator: ":"))") }
        return parts.joined(separator: "; ")
    }

    public static func pins(_ t: TrustSettings) -> String {
        if t.pins.isEmpty { return "none" }
        let how: String
        switch (t.verify, t.pinReportOnly) {
        case (.pinOnly, _): how = "pin-only: the server's own key must match"
        case (_, true): how = "report only: a key matching none is logged and counted, not refused"
        default: how = "a certificate of the verified chain must have one of these keys"
        }
        return "\(t.pins.count) pin(s), \(how)"
    }

    public static func ocsp(_ t: TrustSettings) -> String {
        if t.requireOCSPStaple { return "required: the server must staple a current, verified OCSP response (revoked is refused)" }
        if t.wantsOCSPStaple { return "requested: a stapled response is verified when present (revoked is refused)" }
        return "not requested"
    }

    public static func revocation(_ t: TrustSettings) -> String {
        let sources = [t.crlFiles.isEmpty ? nil : "\(t.crlFiles.count) CRL file(s)",
                       t.crlFetch ? "the CRLs of its distribution points, fetched over HTTP(S) (crl_fetch)" : nil].compactMap { $0 }.joined(separator: " and ")
        let what = t.revocationScope == .chain ? "each certificate of the chain (but the trust anchor)" : "the leaf (revocation_scope = \"leaf\")"
        switch t.revocation {
        case .off: return "off (no CRL is checked)"
        case .soft: return "soft: \(what) is checked against \(sources); revoked is refused, a missing or stale CRL is logged and allowed"
        case .hard: return "hard: \(what) is checked against \(sources); revoked, or a missing or stale CRL, is refused"
        }
    }
}
