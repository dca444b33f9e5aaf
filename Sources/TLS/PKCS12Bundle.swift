import CEventTLS

/// A PKCS#12 (.p12, .pfx) bundle: a certificate, its key and any CA certificates, as portals hand them out.
enum PKCS12Bundle {
    static func load(path: String, password: [UInt8]?) throws -> ([Certificate], PrivateKey) {
        guard let bio = BIO_new_file(path, "rb") else {
            _ = OpenSSLErrors.drain()
            throw TLSSetupError.unreadable(path: path, reason: "no such file or not readable")
        }
        defer { BIO_free(bio) }
        guard let p12 = d2i_PKCS12_bio(bio, nil) else {
            throw TLSSetupError.invalidCertificate(path: path, reason: "not a PKCS#12 bundle: \(OpenSSLErrors.describe(OpenSSLErrors.drain()))")
        }
        defer { PKCS12_free(p12) }
        var key: OpaquePointer?
        var cert: OpaquePointer?
        var cas: OpaquePointer?
        let pass = (password ?? []) + [0]
        let ok = pass.withUnsafeBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                PKCS12_parse(p12, $0, &key, &cert, &cas)
            }
        }
        let errors = OpenSSLErrors.drain()
        guard ok == 1, let key, let cert else {
            if let key { EVP_PKEY_free(key) }
            if let cert { X509_free(cert) }
            if let cas { mtls_sk_X509_pop_free(cas) }
            let text = OpenSSLErrors.describe(errors)
            let reason = text.contains("mac verify failure")
                ? (password == nil ? "the bundle is protected and no password was given (set p12_password_file or p12_password_env)" : "wrong password for the bundle")
                : text
            throw TLSSetupError.invalidKey(path: path, reason: reason)
        }
        var chain = [Certificate(taking: cert)]
        if let cas {
            for i in 0..<mtls_sk_X509_num(cas) {
                if let x = mtls_sk_X509_value(cas, i), X509_up_ref(x) == 1 {
                    chain.append(Certificate(taking: x))
                }
            }
            mtls_sk_X509_pop_free(cas)
        }
        return (ordered(chain), PrivateKey(taking: key))
    }

    /// Bundles list their CA certificates in no fixed order: keep the leaf first, then each issuer in turn,
    /// and leave out certificates that are not on the leaf's path.
    static func ordered(_ certificates: [Certificate]) -> [Certificate] {
        var chain = [certificates[0]]
        var rest = Array(certificates.dropFirst())
        while let i = rest.firstIndex(where: { chain.last!.isIssued(by: $0) && $0 !== chain.last! }) {
            let issuer = rest.remove(at: i)
            if issuer.subject == chain.last!.subject { break }  // self-signed leaf
            chain.append(issuer)
        }
        _ = OpenSSLErrors.drain()
        return chain
    }
}
