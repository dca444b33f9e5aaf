import CEventTLS
#if canImport(Glibc)
import Glibc
#endif

/// The local certificate authority used to intercept CONNECT tunnels to mTLS routes: the workflow trusts it,
/// and the proxy mints short-lived leaf certificates from it, one per host. Its key never leaves the proxy host.
public final class LocalCA: @unchecked Sendable {
    public let certificate: Certificate
    public let key: PrivateKey

    public init(certificate: Certificate, key: PrivateKey) {
        self.certificate = certificate
        self.key = key
    }

    public static func load(certPath: String, keyPath: String) throws -> LocalCA {
        let chain = try Certificate.loadPEMChain(path: certPath)
        let key = try PrivateKey.loadPEM(path: keyPath)
        guard X509_check_private_key(chain[0].pointer, key.pointer) == 1 else {
            _ = OpenSSLErrors.drain()
            throw TLSSetupError.keyMismatch(certPath: certPath, keyPath: keyPath, subject: chain[0].subject)
        }
        guard X509_check_ca(chain[0].pointer) != 0 else {
            throw TLSSetupError.invalidCertificate(path: certPath, reason: "not a CA certificate (basicConstraints CA:TRUE is missing)")
        }
        return LocalCA(certificate: chain[0], key: key)
    }

    /// Makes a new CA (EC P-256, self-signed, valid `days`) and writes it: the key readable only by its owner.
    /// Refuses to overwrite existing files.
    @discardableResult
    public static func create(certPath: String, keyPath: String, commonName: String = "mtls-proxy local CA",
                              days: Int = 825) throws -> LocalCA {
        for path in [certPath, keyPath] where access(path, F_OK) == 0 {
            throw TLSSetupError.context("\(path) already exists; remove it first to make a new CA")
        }
        let key = try Minting.newKey()
        let cert = try Minting.certificate(subject: commonName, publicKey: key, issuer: nil, signer: key,
                                           validitySeconds: days * 86_400, isCA: true, dnsName: nil)
        try Minting.writePEM(key: key, to: keyPath, mode: 0o600)
        try Minting.writeFile(cert.pem, to: certPath, mode: 0o644)
        return LocalCA(certificate: cert, key: key)
    }

    /// A leaf for `host` (a DNS name or an IP address), valid for `validitySeconds` from five minutes ago.
    public func mintLeaf(host: String, validitySeconds: Int) throws -> (Certificate, PrivateKey) {
        let key = try Minting.newKey()
        let cert = try Minting.certificate(subject: host, publicKey: key, issuer: certificate, signer: self.key,
                                           validitySeconds: validitySeconds, isCA: false, dnsName: host)
        return (cert, key)
    }
}

enum Minting {
    static func newKey() throws -> PrivateKey {
        guard let ctx = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else { throw TLSSetupError.context("no EC key support") }
        defer { EVP_PKEY_CTX_free(ctx) }
        var pkey: OpaquePointer?
        guard EVP_PKEY_keygen_init(ctx) == 1, EVP_PKEY_CTX_set_group_name(ctx, "P-256") == 1,
              EVP_PKEY_keygen(ctx, &pkey) == 1, let pkey else {
            throw TLSSetupError.context("EC key generation failed: \(OpenSSLErrors.describe(OpenSSLErrors.drain()))")
        }
        return PrivateKey(taking: pkey)
    }

    static func certificate(subject: String, publicKey: PrivateKey, issuer: Certificate?, signer: PrivateKey,
                            validitySeconds: Int, isCA: Bool, dnsName: String?) throws -> Certificate {
        // issue 15 point 8: every X509 call below is checked (check(...)); a failure throws, nothing half-made is used.
        try check(dnsName.map(Self.isExpressible) ?? true, "no certificate for a host that is neither a DNS name nor an IP address")
        guard let x509 = X509_new() else { throw TLSSetupError.context("X509_new failed") }
        let cert = Certificate(taking: x509)
        try check(X509_set_version(x509, 2) == 1, "X509_set_version")
        // A random 128-bit serial.
        guard let bn = BN_new() else { throw TLSSetupError.context("BN_new failed") }
        defer { BN_free(bn) }
        try check(BN_rand(bn, 127, -1, 0) == 1 && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x509)) != nil, "serial number")
        try check(X509_gmtime_adj(X509_getm_notBefore(x509), -300) != nil && X509_gmtime_adj(X509_getm_notAfter(x509), validitySeconds) != nil, "validity")
        try check(X509_set_pubkey(x509, publicKey.pointer) == 1, "X509_set_pubkey")
        let name = X509_get_subject_name(x509)
        if isCA { try check(X509_NAME_add_entry_by_txt(name, "O", mtls_MBSTRING_ASC(), "mtls-proxy", -1, -1, 0) == 1, "subject O") }
        // A CN holds at most 64 characters; a leaf for a longer name is named by its subjectAltName alone.
        if isCA || subject.utf8.count <= 64 {
            try check(X509_NAME_add_entry_by_txt(name, "CN", mtls_MBSTRING_ASC(), subject, -1, -1, 0) == 1, "subject CN (at most 64 characters)")
        }
        try check(X509_set_issuer_name(x509, issuer.map { X509_get_subject_name($0.pointer) } ?? name) == 1, "X509_set_issuer_name")

        var v3 = X509V3_CTX()
        X509V3_set_ctx(&v3, issuer?.pointer ?? x509, x509, nil, nil, 0)
        var extensions: [(Int32, String)] = []
        if isCA {
            extensions = [(NID_basic_constraints, "critical,CA:TRUE,pathlen:0"), (NID_key_usage, "critical,keyCertSign,cRLSign"),
                          (NID_subject_key_identifier, "hash")]
        } else {
            let san = IPAddressCheck.isIP(dnsName ?? "") ? "IP:\(dnsName!)" : "DNS:\(dnsName ?? subject)"
            extensions = [(NID_basic_constraints, "critical,CA:FALSE"), (NID_key_usage, "critical,digitalSignature"),
                          (NID_ext_key_usage, "serverAuth"), (NID_subject_alt_name, san),
                          (NID_authority_key_identifier, "keyid")]
        }
        for (nid, value) in extensions {
            guard let ext = X509V3_EXT_conf_nid(nil, &v3, nid, value) else {
                throw TLSSetupError.context("certificate extension \(value): \(OpenSSLErrors.describe(OpenSSLErrors.drain()))")
            }
            let added = X509_add_ext(x509, ext, -1)  // issue 15 point 8: checked
            X509_EXTENSION_free(ext)
            try check(added == 1, "X509_add_ext \(value)")
        }
        guard X509_sign(x509, signer.pointer, EVP_sha256()) > 0 else {
            throw TLSSetupError.context("signing failed: \(OpenSSLErrors.describe(OpenSSLErrors.drain()))")
        }
        return cert
    }

    static func writePEM(key: PrivateKey, to path: String, mode: mode_t) throws {
        guard let bio = BIO_new(BIO_s_mem()) else { throw TLSSetupError.context("out of memory") }
        defer { BIO_free(bio) }
        PEM_write_bio_PrivateKey(bio, key.pointer, nil, nil, 0, nil, nil)
        var data: UnsafeMutablePointer<CChar>?
        let n = mtls_BIO_get_mem_data(bio, &data)
        let text = data.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: n), as: UTF8.self) } ?? ""
        try writeFile(text, to: path, mode: mode)
    }

    static func writeFile(_ text: String, to path: String, mode: mode_t) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw TLSSetupError.unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        fchmod(fd, mode)
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
            throw TLSSetupError.unreadable(path: path, reason: String(cString: strerror(errno)))
        }
    }
}

enum IPAddressCheck {
    static func isIP(_ s: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, s, &v4) == 1 || inet_pton(AF_INET6, s, &v6) == 1
    }
}

/// A server-side TLS context presenting one minted leaf, for the client end of an intercepted tunnel.
/// Only the host it was minted for is accepted as SNI.
public final class InterceptionContext: @unchecked Sendable {
    public let pointer: OpaquePointer
    public let host: String
    public let notAfter: Int

    public init(ca: LocalCA, host: String, validitySeconds: Int) throws {
        let (leaf, key) = try ca.mintLeaf(host: host, validitySeconds: validitySeconds)
        guard let ctx = SSL_CTX_new(TLS_server_method()) else { throw TLSSetupError.context(OpenSSLErrors.describe(OpenSSLErrors.drain())) }
        pointer = ctx
        self.host = host
        notAfter = leaf.notAfter
        mtls_SSL_CTX_set_default_options(ctx)
        _ = mtls_SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)
        _ = mtls_SSL_CTX_set_mode(ctx, mtls_SSL_MODE_RELEASE_BUFFERS())
        guard SSL_CTX_use_certificate(ctx, leaf.pointer) == 1, mtls_SSL_CTX_add1_chain_cert(ctx, ca.certificate.pointer) == 1,
              SSL_CTX_use_PrivateKey(ctx, key.pointer) == 1 else {
            throw TLSSetupError.context(OpenSSLErrors.describe(OpenSSLErrors.drain()))
        }
        // The callback compares the SNI with the leaf the SSL itself holds: it needs no memory of ours, so an
        // SSL that outlives this object (a reload or a cache flush during a handshake) stays safe.
        _ = mtls_SSL_CTX_set_tlsext_servername_callback(ctx, interceptionServerNameCallback)
    }

    deinit {
        SSL_CTX_free(pointer)
    }

    /// A server-side session for one intercepted tunnel; it keeps this context alive while the connection holds it.
    public func makeSession() -> TLSSession? {
        guard let ssl = SSL_new(pointer) else {
            _ = OpenSSLErrors.drain()
            return nil
        }
        return TLSSession(ssl: ssl, context: self)
    }
}

/// A client asking (by SNI) for another name than the tunnel's host gets a fatal unrecognized_name alert.
private func interceptionServerNameCallback(_ ssl: OpaquePointer?, _ alert: UnsafeMutablePointer<Int32>?, _ arg: UnsafeMutableRawPointer?) -> Int32 {
    guard let ssl, let name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) else { return mtls_SSL_TLSEXT_ERR_OK() }
    // The tunnel's host is canonical (no trailing dot); a client may send the dotted form.
    var length = strlen(name)
    if length > 1 && name[length - 1] == CChar(UInt8(ascii: ".")) { length -= 1 }
    if let leaf = SSL_get_certificate(ssl), X509_check_host(leaf, name, length, 0, nil) == 1 { return mtls_SSL_TLSEXT_ERR_OK() }
    alert?.pointee = mtls_SSL_AD_UNRECOGNIZED_NAME()
    return mtls_SSL_TLSEXT_ERR_ALERT_FATAL()
}
