import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// Why the proxy itself refused an upstream's certificate beyond OpenSSL's chain and name checks: a pin that
/// does not match, a certificate a CRL revokes, a CRL that is needed and missing or stale (hard mode). The
/// proxy turns it into a 502 with its own Proxy-Status (`ConnectFailures`), distinct from other TLS failures.
public enum TrustRefusal: Sendable, Equatable {
    /// No certificate of the verified chain (pin-only: the leaf) has a pinned key. `presented` is the leaf's pin.
    case pinMismatch(presented: String, subject: String)
    /// `depth` is the certificate's place in the verified chain: 0 for the server's own, 1 for the CA that issued
    /// it, and so on (an intermediate revoked by its issuer's CRL).
    case revoked(subject: String, serial: String, depth: Int = 0)
    /// `require_ocsp_staple` (or an invalid staple under hard revocation): no valid stapled OCSP response.
    case ocspStapleInvalid(subject: String, serial: String, reason: String)
    /// Hard mode: no usable CRL for this certificate (`reason` is OpenSSL's, e.g. "CRL has expired").
    case crlUnavailable(subject: String, serial: String, reason: String, depth: Int = 0)
}

/// What was let through but should be seen: a pin mismatch in report-only mode, a missing or stale CRL in soft
/// mode. The upstream connection logs these after its handshake.
public enum TrustNote: Sendable, Equatable {
    case pinMismatchReported(presented: String, subject: String)
    case crlUnavailableAllowed(subject: String, serial: String, reason: String, depth: Int = 0)
    case ocspStapleInvalidAllowed(subject: String, serial: String, reason: String)
}

/// Process-wide counts of the decisions above, for /metrics. Atomic: OpenSSL calls the verification on every
/// worker's thread.
public enum TrustDecisionCounters {
    public enum Decision: Int, CaseIterable, Sendable {
        case revoked, crlUnavailableRefused, crlUnavailableAllowed, pinMismatchRefused, pinMismatchReported
        case ocspStapleRefused, ocspStapleInvalidAllowed

        /// The `decision` label.
        public var label: String {
            switch self {
            case .revoked: return "revoked"
            case .crlUnavailableRefused: return "crl_unavailable_refused"
            case .crlUnavailableAllowed: return "crl_unavailable_allowed"
            case .pinMismatchRefused: return "pin_mismatch_refused"
            case .pinMismatchReported: return "pin_mismatch_reported"
            case .ocspStapleRefused: return "ocsp_staple_refused"
            case .ocspStapleInvalidAllowed: return "ocsp_staple_invalid_allowed"
            }
        }
    }

    nonisolated(unsafe) private static let counts = UnsafeMutablePointer<Int>.allocate(capacity: Decision.allCases.count)
    nonisolated(unsafe) private static var initialised: Bool = {
        counts.initialize(repeating: 0, count: Decision.allCases.count)
        return true
    }()

    static func count(_ d: Decision) {
        _ = initialised
        _ = mtls_atomic_add(counts + d.rawValue, 1)
    }

    public static func value(_ d: Decision) -> Int {
        _ = initialised
        return mtls_atomic_load(counts + d.rawValue)
    }
}

/// RFC 7469 pins: base64 of the SHA-256 of a certificate's DER SubjectPublicKeyInfo.
public enum SPKIPin {
    /// The 32-byte digest of `x509`'s public key; nil if it cannot be encoded.
    static func digest(_ x509: OpaquePointer) -> [UInt8]? {
        var der: UnsafeMutablePointer<UInt8>?
        let n = mtls_X509_spki_der(x509, &der)
        guard n > 0, let der else { return nil }
        defer { mtls_OPENSSL_free(der) }
        return MessageDigest.sha256(Array(UnsafeBufferPointer(start: der, count: Int(n))))
    }

    public static func base64(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            let b0 = UInt32(bytes[i]), b1 = i + 1 < bytes.count ? UInt32(bytes[i + 1]) : 0, b2 = i + 2 < bytes.count ? UInt32(bytes[i + 2]) : 0
            let v = b0 << 16 | b1 << 8 | b2
            out.append(alphabet[Int(v >> 18 & 63)])
            out.append(alphabet[Int(v >> 12 & 63)])
            out.append(i + 1 < bytes.count ? alphabet[Int(v >> 6 & 63)] : UInt8(ascii: "="))
            out.append(i + 2 < bytes.count ? alphabet[Int(v & 63)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The pin of `x509` as configured (`pin_spki_sha256`).
    static func pin(_ x509: OpaquePointer) -> String { digest(x509).map(base64) ?? "?" }
}

extension Certificate {
    /// This certificate's RFC 7469 pin (`pin_spki_sha256`).
    public var spkiPin: String { SPKIPin.pin(pointer) }
}

/// One CRL loaded from a file: who issued it, when it was made and when the next one is due.
public struct CRLSummary: Sendable, Equatable {
    public var file: String
    public var issuer: String
    /// Unix times; `nextUpdate` is nil when the CRL names none.
    public var lastUpdate: Int
    public var nextUpdate: Int?
    public var revokedCount: Int

    /// Whether the CRL is past its nextUpdate at `now`: OpenSSL then treats it as expired ("CRL has expired").
    public func isStale(at now: Int) -> Bool { nextUpdate.map { $0 <= now } ?? false }
}

/// The TLS policy and revocation set-up of a `ClientTLSContext`, checked against OpenSSL: every name in the
/// policy must be one this OpenSSL knows, so `check` catches a typo. Errors name the config key.
enum UpstreamTrustSetup {
    static func applyPolicy(_ trust: TrustSettings, to ctx: OpaquePointer) throws {
        guard let scratch = SSL_CTX_new(TLS_client_method()) else {
            throw TLSSetupError.context(OpenSSLErrors.describe(OpenSSLErrors.drain()))
        }
        defer { SSL_CTX_free(scratch) }
        func cipherNames(_ c: OpaquePointer) -> Set<String> {
            guard let list = SSL_CTX_get_ciphers(c) else { return [] }
            return Set((0..<mtls_sk_SSL_CIPHER_num(list)).compactMap { i in
                mtls_sk_SSL_CIPHER_value(list, i).map { String(cString: SSL_CIPHER_get_name($0)) }
            })
        }
        for (i, name) in trust.ciphers.enumerated() {
            let known = SSL_CTX_set_cipher_list(scratch, name) == 1 && cipherNames(scratch).contains(name)
            _ = OpenSSLErrors.drain()
            if !known {
                throw TLSSetupError.policy(key: "tls_ciphers[\(i + 1)]", message: "\"\(name)\" is not a TLS 1.2 cipher this OpenSSL knows (OpenSSL names, e.g. \"ECDHE-ECDSA-AES128-GCM-SHA256\"; `openssl ciphers -v` lists them)")
            }
        }
        for (i, name) in trust.cipherSuites.enumerated() {
            let known = SSL_CTX_set_ciphersuites(scratch, name) == 1 && cipherNames(scratch).contains(name)
            _ = OpenSSLErrors.drain()
            if !known {
                throw TLSSetupError.policy(key: "tls_ciphersuites[\(i + 1)]", message: "\"\(name)\" is not a TLS 1.3 cipher suite this OpenSSL knows (e.g. \"TLS_AES_128_GCM_SHA256\", \"TLS_AES_256_GCM_SHA384\", \"TLS_CHACHA20_POLY1305_SHA256\")")
            }
        }
        for (i, name) in trust.groups.enumerated() where mtls_SSL_CTX_set1_groups_list(scratch, name) != 1 {
            _ = OpenSSLErrors.drain()
            throw TLSSetupError.policy(key: "tls_groups[\(i + 1)]", message: "\"\(name)\" is not a group this OpenSSL knows (e.g. \"X25519\", \"P-256\", \"P-384\")")
        }
        for (i, name) in trust.signatureAlgorithms.enumerated() where mtls_SSL_CTX_set1_sigalgs_list(scratch, name) != 1 {
            _ = OpenSSLErrors.drain()
            throw TLSSetupError.policy(key: "tls_signature_algorithms[\(i + 1)]", message: "\"\(name)\" is not a signature algorithm this OpenSSL knows (e.g. \"ECDSA+SHA256\", \"rsa_pss_rsae_sha256\", \"ed25519\")")
        }

        let version = { (v: TLSVersionSetting) in v == .tls13 ? TLS1_3_VERSION : TLS1_2_VERSION }
        // Each list as a whole: a failure here (names valid one by one) is still named by its key.
        func check(_ ok: Bool, _ key: String) throws {
            guard ok else {
                let why = OpenSSLErrors.describe(OpenSSLErrors.drain())
                throw TLSSetupError.policy(key: key, message: "OpenSSL does not accept this list: \(why)")
            }
        }
        try check(mtls_SSL_CTX_set_min_proto_version(ctx, version(trust.minTLS)) == 1, "tls_min_version")
        try check(mtls_SSL_CTX_set_max_proto_version(ctx, version(trust.maxTLS)) == 1, "tls_max_version")
        try check(SSL_CTX_set_ciphersuites(ctx, trust.cipherSuites.joined(separator: ":")) == 1, "tls_ciphersuites")
        try check(mtls_SSL_CTX_set1_groups_list(ctx, trust.groups.joined(separator: ":")) == 1, "tls_groups")
        // An empty TLS 1.2 list is allowed only with TLS 1.3 as the minimum (the loader checks).
        if !trust.ciphers.isEmpty { try check(SSL_CTX_set_cipher_list(ctx, trust.ciphers.joined(separator: ":")) == 1, "tls_ciphers") }
        if !trust.signatureAlgorithms.isEmpty {
            try check(mtls_SSL_CTX_set1_sigalgs_list(ctx, trust.signatureAlgorithms.joined(separator: ":")) == 1, "tls_signature_algorithms")
        }
    }

    /// Loads every CRL of `trust.crlFiles` into the context's store. A file that cannot be read or holds no CRL
    /// is an error naming its key.
    static func loadCRLs(_ trust: TrustSettings, into ctx: OpaquePointer) throws -> [CRLSummary] {
        guard trust.revocation != .off else { return [] }
        guard let store = SSL_CTX_get_cert_store(ctx) else { throw TLSSetupError.context("no certificate store") }
        var summaries: [CRLSummary] = []
        for (i, path) in trust.crlFiles.enumerated() {
            let key = "crl_files[\(i + 1)]"
            guard let bio = BIO_new_file(path, "r") else {
                _ = OpenSSLErrors.drain()
                throw TLSSetupError.policy(key: key, message: "cannot read \(path): \(String(cString: strerror(errno)))")
            }
            defer { BIO_free(bio) }
            var crls: [OpaquePointer] = []
            while let crl = PEM_read_bio_X509_CRL(bio, nil, nil, nil) { crls.append(crl) }
            if crls.isEmpty, let der = BIO_new_file(path, "r") {
                // Not PEM: one DER CRL, read from the start again.
                if let crl = d2i_X509_CRL_bio(der, nil) { crls.append(crl) }
                BIO_free(der)
            }
            _ = OpenSSLErrors.drain()
            guard !crls.isEmpty else {
                throw TLSSetupError.policy(key: key, message: "\(path): no CRL found (expected PEM -----BEGIN X509 CRL----- or DER, as `openssl ca -gencrl` makes)")
            }
            for crl in crls {
                defer { X509_CRL_free(crl) }
                X509_STORE_add_crl(store, crl)
                let next = X509_CRL_get0_nextUpdate(crl)
                summaries.append(CRLSummary(
                    file: path, issuer: Certificate.nameString(X509_CRL_get_issuer(crl)),
                    lastUpdate: Certificate.epoch(X509_CRL_get0_lastUpdate(crl)),
                    nextUpdate: next.map { Certificate.epoch($0) },
                    revokedCount: X509_CRL_get_REVOKED(crl).map { Int(mtls_sk_X509_REVOKED_num($0)) } ?? 0))
            }
        }
        _ = OpenSSLErrors.drain()
        return summaries
    }
}

// MARK: verification, called by OpenSSL during a full handshake

/// Replaces OpenSSL's own verification of the server's chain (SSL_CTX_set_cert_verify_callback): pin-only
/// checks the leaf's key alone; otherwise OpenSSL's verification runs, with CRL checks when revocation is on,
/// then the pins are matched against the verified chain. A refusal (a pin mismatch sets
/// X509_V_ERR_APPLICATION_VERIFICATION; a revocation decision leaves OpenSSL's own error) fails the handshake with
/// an alert, stores no session, and tells the connection why.
func upstreamCertificateVerify(_ storeCtx: OpaquePointer?, _ arg: UnsafeMutableRawPointer?) -> Int32 {
    guard let storeCtx, let arg else { return 0 }
    let context = Unmanaged<ClientTLSContext>.fromOpaque(arg).takeUnretainedValue()
    let trust = context.trust
    let owner = mtls_X509_STORE_CTX_get_ssl(storeCtx).flatMap { UpstreamTLSSession.owner(of: $0) }

    if trust.verify == .pinOnly {
        guard let leaf = X509_STORE_CTX_get0_cert(storeCtx) else { return 0 }
        if let digest = SPKIPin.digest(leaf), trust.pins.contains(digest) { return 1 }
        TrustDecisionCounters.count(.pinMismatchRefused)
        owner?.refuse(.pinMismatch(presented: SPKIPin.pin(leaf), subject: Certificate.nameString(X509_get_subject_name(leaf))))
        X509_STORE_CTX_set_error(storeCtx, X509_V_ERR_APPLICATION_VERIFICATION)
        return 0
    }

    // Revocation covers the whole chain (X509_V_FLAG_CRL_CHECK_ALL): each certificate against its issuer's CRL.
    // With crl_fetch, the context's store looks up, for each certificate, the CRLs fetched from its own
    // distribution points (`fetchedCRLLookup`), beside those of crl_files; it notes the points with no CRL yet.
    // (`revocation_scope = "leaf"`: the server's certificate only.)
    let fetching = trust.crlFetch && trust.revocation != .off
    if fetching { owner?.startCRLRound() }
    let crlFlags = trust.revocationScope == .chain ? X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL : X509_V_FLAG_CRL_CHECK
    switch trust.revocation {
    case .off: break
    case .soft:
        X509_STORE_CTX_set_flags(storeCtx, UInt(crlFlags))
        X509_STORE_CTX_set_verify_cb(storeCtx, softRevocationCallback)
    case .hard:
        X509_STORE_CTX_set_flags(storeCtx, UInt(crlFlags))
        X509_STORE_CTX_set_verify_cb(storeCtx, hardRevocationCallback)
    }
    let verified = X509_verify_cert(storeCtx) == 1
    if fetching, let owner, !owner.missingCRLURLs.isEmpty {
        // Only a chain that verifies (but for revocation) gets its distribution points fetched: a server cannot
        // send the proxy to URLs of its choosing with a certificate no trusted CA issued. Every certificate's
        // points are wanted at once, so that a chain's CRLs arrive together.
        for url in owner.chainCRLURLs(storeCtx) ?? [] { CRLCache.shared.want(url) }
        if owner.awaitingCRL, let ssl = mtls_X509_STORE_CTX_get_ssl(storeCtx) {
            // Hard mode, the first fetch of a needed CRL under way: the handshake waits for it (the connection
            // tries again shortly, until its connect_timeout) rather than refusing a server it cannot judge yet.
            if mtls_SSL_set_retry_verify(ssl) == 1 {
                X509_STORE_CTX_set_error(storeCtx, X509_V_OK)
                return 1
            }
            owner.refuse(.crlUnavailable(subject: "?", serial: "?", reason: "cannot wait for the CRL being fetched"))
            return 0
        }
    }
    guard verified else { return 0 }
    guard !trust.pins.isEmpty, let chain = X509_STORE_CTX_get0_chain(storeCtx) else { return 1 }
    for i in 0..<mtls_sk_X509_num(chain) {
        if let cert = mtls_sk_X509_value(chain, i), let digest = SPKIPin.digest(cert), trust.pins.contains(digest) { return 1 }
    }
    guard let leaf = X509_STORE_CTX_get0_cert(storeCtx) else { return 0 }
    let presented = SPKIPin.pin(leaf), subject = Certificate.nameString(X509_get_subject_name(leaf))
    if trust.pinReportOnly {
        TrustDecisionCounters.count(.pinMismatchReported)
        owner?.note(.pinMismatchReported(presented: presented, subject: subject))
        return 1
    }
    TrustDecisionCounters.count(.pinMismatchRefused)
    owner?.refuse(.pinMismatch(presented: presented, subject: subject))
    X509_STORE_CTX_set_error(storeCtx, X509_V_ERR_APPLICATION_VERIFICATION)
    return 0
}

/// The CRL distribution points of every certificate of the chain being verified, if that chain is good apart from
/// revocation (nil otherwise): the same store, untrusted certificates and parameters (host name included), in a
/// verification of its own with no CRL check.
func distributionPointsOfChainVerifiedBeforeRevocation(_ storeCtx: OpaquePointer, leafOnly: Bool) -> [String]? {
    guard let store = X509_STORE_CTX_get0_store(storeCtx), let leaf = X509_STORE_CTX_get0_cert(storeCtx),
          let probe = X509_STORE_CTX_new() else { return nil }
    defer {
        X509_STORE_CTX_free(probe)
        _ = OpenSSLErrors.drain()
    }
    guard X509_STORE_CTX_init(probe, store, leaf, X509_STORE_CTX_get0_untrusted(storeCtx)) == 1 else { return nil }
    X509_VERIFY_PARAM_set1(X509_STORE_CTX_get0_param(probe), X509_STORE_CTX_get0_param(storeCtx))
    X509_VERIFY_PARAM_clear_flags(X509_STORE_CTX_get0_param(probe), UInt(X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL))
    guard X509_verify_cert(probe) == 1, let chain = X509_STORE_CTX_get0_chain(probe) else { return nil }
    var urls: [String] = []
    let checked = leafOnly ? min(1, mtls_sk_X509_num(chain)) : mtls_sk_X509_num(chain)
    for i in 0..<checked {
        // (The trust anchor needs no CRL: a self-signed root's own distribution point is not followed.)
        guard let cert = mtls_sk_X509_value(chain, i), X509_check_issued(cert, cert) != X509_V_OK else { continue }
        for url in CRLCache.distributionPoints(cert) where !urls.contains(url) && urls.count < CRLCache.maxURLsPerChain { urls.append(url) }
    }
    return urls
}

/// The context store's CRL lookup when the route fetches CRLs (`X509_STORE_set_lookup_crls`), called by OpenSSL
/// for each certificate whose revocation it checks: the store's own CRLs for the issuer `name` (crl_files), and
/// the CRLs fetched from that certificate's distribution points. A point with no CRL yet is noted on the
/// connection, to be fetched once the chain is known to verify.
func fetchedCRLLookup(_ storeCtx: OpaquePointer?, _ name: OpaquePointer?) -> OpaquePointer? {
    guard let storeCtx, let name else { return nil }
    let found = X509_STORE_CTX_get1_crls(storeCtx, name) ?? mtls_sk_X509_CRL_new_null()
    guard let stack = found, let cert = X509_STORE_CTX_get_current_cert(storeCtx),
          X509_check_issued(cert, cert) != X509_V_OK else { return found }
    let urls = CRLCache.distributionPoints(cert)
    guard !urls.isEmpty else { return stack }
    let owner = mtls_X509_STORE_CTX_get_ssl(storeCtx).flatMap { UpstreamTLSSession.owner(of: $0) }
    for url in urls {
        guard let crl = CRLCache.shared.crl(for: url) else {
            owner?.noteMissingCRL(url)
            continue
        }
        if mtls_sk_X509_CRL_push(stack, crl) == 0 { X509_CRL_free(crl) }
    }
    return stack
}

/// OpenSSL's verification errors that mean "no usable CRL" rather than "revoked".
private let crlUnavailableErrors: Set<Int32> = [
    X509_V_ERR_UNABLE_TO_GET_CRL, X509_V_ERR_CRL_HAS_EXPIRED, X509_V_ERR_CRL_NOT_YET_VALID,
    X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER, X509_V_ERR_CRL_SIGNATURE_FAILURE, X509_V_ERR_UNABLE_TO_DECRYPT_CRL_SIGNATURE,
    X509_V_ERR_ERROR_IN_CRL_LAST_UPDATE_FIELD, X509_V_ERR_ERROR_IN_CRL_NEXT_UPDATE_FIELD, X509_V_ERR_DIFFERENT_CRL_SCOPE,
    X509_V_ERR_KEYUSAGE_NO_CRL_SIGN, X509_V_ERR_UNHANDLED_CRITICAL_CRL_EXTENSION, X509_V_ERR_CRL_PATH_VALIDATION_ERROR,
]

/// Whether the CRL that lists the certificate being checked is signed by the issuer OpenSSL matched it to (true
/// when OpenSSL does not say which CRL or issuer: the revocation stands).
private func revokedByItsIssuersCRL(_ storeCtx: OpaquePointer) -> Bool {
    guard let crl = X509_STORE_CTX_get0_current_crl(storeCtx), let issuer = X509_STORE_CTX_get0_current_issuer(storeCtx),
          let key = X509_get0_pubkey(issuer) else { return true }
    defer { _ = OpenSSLErrors.drain() }
    return X509_CRL_verify(crl, key) == 1
}

private func softRevocationCallback(_ ok: Int32, _ storeCtx: OpaquePointer?) -> Int32 {
    revocationDecision(ok, storeCtx, hard: false)
}

private func hardRevocationCallback(_ ok: Int32, _ storeCtx: OpaquePointer?) -> Int32 {
    revocationDecision(ok, storeCtx, hard: true)
}

private func revocationDecision(_ ok: Int32, _ storeCtx: OpaquePointer?, hard: Bool) -> Int32 {
    guard ok == 0, let storeCtx else { return ok }
    var error = X509_STORE_CTX_get_error(storeCtx)
    let owner = mtls_X509_STORE_CTX_get_ssl(storeCtx).flatMap { UpstreamTLSSession.owner(of: $0) }
    let cert = X509_STORE_CTX_get_current_cert(storeCtx)
    let depth = Int(X509_STORE_CTX_get_error_depth(storeCtx))
    let subject = cert.map { Certificate.nameString(X509_get_subject_name($0)) } ?? "?"
    let serial = cert.map { Certificate.serialHex(of: $0) } ?? "?"
    if error == X509_V_ERR_CERT_REVOKED {
        if revokedByItsIssuersCRL(storeCtx) {
            TrustDecisionCounters.count(.revoked)
            owner?.refuse(.revoked(subject: subject, serial: serial, depth: depth))
            return 0
        }
        // Listed by a CRL whose signature does not verify (OpenSSL reported that first; soft mode allowed it,
        // and OpenSSL went on to read the certificate in that CRL): not the issuer's word, so no revocation, but
        // no usable CRL either.
        error = X509_V_ERR_CRL_SIGNATURE_FAILURE
    }
    guard crlUnavailableErrors.contains(error) else { return 0 }
    // The trust anchor itself (the self-signed root ending the chain) is trusted by configuration, not by a CRL:
    // no CRL is needed for it.
    if let cert, let chain = X509_STORE_CTX_get0_chain(storeCtx), depth == Int(mtls_sk_X509_num(chain)) - 1,
       X509_check_issued(cert, cert) == X509_V_OK {
        X509_STORE_CTX_set_error(storeCtx, X509_V_OK)
        return 1
    }
    var reason = String(cString: X509_verify_cert_error_string(Int(error)))
    if let owner, owner.context.trust.crlFetch {
        let urls = cert.map { CRLCache.distributionPoints($0) } ?? []
        // The points the proxy follows for this chain (nil when the chain does not verify apart from revocation:
        // none); only those are fetched, so only those are worth waiting for.
        let followed = owner.chainCRLURLs(storeCtx)
        let awaited = urls.filter { followed?.contains($0) == true && CRLCache.shared.awaitingFirstFetch($0) }
        if hard, owner.mayWaitForCRL, !awaited.isEmpty {
            // Not decided yet: the verification stops here and the handshake waits for the fetch (see
            // `upstreamCertificateVerify`), unless the wait is over.
            owner.awaitingCRL = true
            owner.awaitedCRLURLs = awaited
            return 0
        }
        reason += " (crl_fetch: \(CRLCache.shared.status(of: urls, followed: followed)))"
    }
    if hard {
        TrustDecisionCounters.count(.crlUnavailableRefused)
        owner?.refuse(.crlUnavailable(subject: subject, serial: serial, reason: reason, depth: depth))
        return 0
    }
    // Once per certificate and reason: a CRL whose signature failed is reported again when OpenSSL reads the
    // certificate in it (see CERT_REVOKED above).
    let allowed = TrustNote.crlUnavailableAllowed(subject: subject, serial: serial, reason: reason, depth: depth)
    if owner?.trustNotes.contains(allowed) != true {
        TrustDecisionCounters.count(.crlUnavailableAllowed)
        owner?.note(allowed)
    }
    X509_STORE_CTX_set_error(storeCtx, X509_V_OK)
    return 1
}

// MARK: OCSP stapling

/// OpenSSL's status callback, after the server's certificate was verified: checks a stapled OCSP response for
/// the leaf (signed for its issuer, by a responder the trust store accepts, current, and "good"). Revoked is
/// always refused; a missing or invalid staple is refused with `require_ocsp_staple` (an invalid one also with
/// `revocation = "hard"`), else logged. Returning 0 fails the handshake (alert bad_certificate_status_response).
func upstreamOCSPStatus(_ ssl: OpaquePointer?, _ arg: UnsafeMutableRawPointer?) -> Int32 {
    guard let ssl, let arg else { return 0 }
    let context = Unmanaged<ClientTLSContext>.fromOpaque(arg).takeUnretainedValue()
    let trust = context.trust
    let owner = UpstreamTLSSession.owner(of: ssl)
    guard let leaf = SSL_get0_peer_certificate(ssl) else { return trust.requireOCSPStaple ? 0 : 1 }
    let subject = Certificate.nameString(X509_get_subject_name(leaf)), serial = Certificate.serialHex(of: leaf)
    func invalid(_ reason: String, missing: Bool) -> Int32 {
        _ = OpenSSLErrors.drain()
        if trust.requireOCSPStaple || (!missing && trust.revocation == .hard) {
            TrustDecisionCounters.count(.ocspStapleRefused)
            owner?.refuse(.ocspStapleInvalid(subject: subject, serial: serial, reason: reason))
            return 0
        }
        if !missing {
            TrustDecisionCounters.count(.ocspStapleInvalidAllowed)
            owner?.note(.ocspStapleInvalidAllowed(subject: subject, serial: serial, reason: reason))
        }
        return 1
    }
    var der: UnsafePointer<UInt8>?
    let length = mtls_SSL_get_tlsext_status_ocsp_resp(ssl, &der)
    guard length > 0, der != nil else { return invalid("no OCSP response stapled", missing: true) }
    guard let response = d2i_OCSP_RESPONSE(nil, &der, length) else { return invalid("the stapled OCSP response does not parse", missing: false) }
    defer { OCSP_RESPONSE_free(response) }
    guard OCSP_response_status(response) == OCSP_RESPONSE_STATUS_SUCCESSFUL, let basic = OCSP_response_get1_basic(response) else {
        return invalid("the stapled OCSP response is not a successful one", missing: false)
    }
    defer { OCSP_BASICRESP_free(basic) }
    guard let store = SSL_CTX_get_cert_store(context.pointer) else { return invalid("no trust store", missing: false) }
    // The issuer: from what the server sent, else from the trust store.
    var issuer: OpaquePointer?
    if let chain = SSL_get_peer_cert_chain(ssl) {
        for i in 0..<mtls_sk_X509_num(chain) {
            if let c = mtls_sk_X509_value(chain, i), X509_check_issued(c, leaf) == X509_V_OK, X509_up_ref(c) == 1 { issuer = c; break }
        }
    }
    if issuer == nil, let probe = X509_STORE_CTX_new() {
        if X509_STORE_CTX_init(probe, store, leaf, nil) == 1 {
            var found: OpaquePointer?
            if X509_STORE_CTX_get1_issuer(&found, probe, leaf) == 1 { issuer = found }
        }
        X509_STORE_CTX_free(probe)
    }
    guard let issuer else { return invalid("the issuer of the certificate is unknown", missing: false) }
    defer { X509_free(issuer) }
    guard OCSP_basic_verify(basic, SSL_get_peer_cert_chain(ssl), store, 0) == 1 else {
        return invalid("the stapled OCSP response's signature does not verify", missing: false)
    }
    guard let id = OCSP_cert_to_id(nil, leaf, issuer) else { return invalid("cannot identify the certificate", missing: false) }
    defer { OCSP_CERTID_free(id) }
    var status: Int32 = -1, reason: Int32 = -1
    var revokedAt: UnsafeMutablePointer<ASN1_GENERALIZEDTIME>?, thisUpdate: UnsafeMutablePointer<ASN1_GENERALIZEDTIME>?, nextUpdate: UnsafeMutablePointer<ASN1_GENERALIZEDTIME>?
    guard OCSP_resp_find_status(basic, id, &status, &reason, &revokedAt, &thisUpdate, &nextUpdate) == 1 else {
        return invalid("the stapled OCSP response says nothing about this certificate", missing: false)
    }
    guard OCSP_check_validity(thisUpdate, nextUpdate, 300, -1) == 1 else {
        return invalid("the stapled OCSP response is out of date", missing: false)
    }
    _ = OpenSSLErrors.drain()
    switch status {
    case V_OCSP_CERTSTATUS_GOOD: return 1
    case V_OCSP_CERTSTATUS_REVOKED:
        TrustDecisionCounters.count(.revoked)
        owner?.refuse(.revoked(subject: subject, serial: serial))
        return 0
    default:
        return invalid("the stapled OCSP response says the status is unknown", missing: false)
    }
}
