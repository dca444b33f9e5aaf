import CEventTLS
#if canImport(Glibc)
import Glibc
#endif

/// The kind of private key `mtls-proxy csr` makes.
public enum KeyAlgorithm: Equatable, Sendable, CustomStringConvertible {
    case ecP256
    case rsa(bits: Int)

    public static let rsaSizes = [2048, 3072]

    public var description: String {
        switch self {
        case .ecP256: return "EC P-256"
        case .rsa(let bits): return "RSA \(bits)"
        }
    }
}

extension PrivateKey {
    /// A new private key.
    public static func generate(_ algorithm: KeyAlgorithm) throws -> PrivateKey {
        let name: String
        switch algorithm {
        case .ecP256: name = "EC"
        case .rsa: name = "RSA"
        }
        guard let ctx = EVP_PKEY_CTX_new_from_name(nil, name, nil) else { throw RenewalError("no \(name) key support") }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_keygen_init(ctx) == 1 else { throw keyError(algorithm) }
        switch algorithm {
        case .ecP256:
            guard EVP_PKEY_CTX_set_group_name(ctx, "P-256") == 1 else { throw keyError(algorithm) }
        case .rsa(let bits):
            guard KeyAlgorithm.rsaSizes.contains(bits), EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, Int32(bits)) == 1 else {
                throw keyError(algorithm)
            }
        }
        var pkey: OpaquePointer?
        guard EVP_PKEY_keygen(ctx, &pkey) == 1, let pkey else { throw keyError(algorithm) }
        return PrivateKey(taking: pkey)
    }

    private static func keyError(_ algorithm: KeyAlgorithm) -> RenewalError {
        RenewalError("cannot make an \(algorithm) key: \(OpenSSLErrors.describe(OpenSSLErrors.drain()))")
    }

    /// The key as unencrypted PKCS#8 PEM (a `PRIVATE KEY` block), for a file only its owner reads.
    public var pkcs8PEM: String {
        memoryBIOText { PEM_write_bio_PrivateKey($0, pointer, nil, nil, 0, nil, nil) }
    }
}

/// Why a key or a request could not be made or written, as a sentence.
public struct RenewalError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// A PKCS#10 certificate signing request for renewing a client certificate.
public enum CertificateRequest {
    /// A CSR (PEM) with exactly the subject of `certificate`, for `key`'s public key, signed with SHA-256.
    public static func make(subjectOf certificate: Certificate, key: PrivateKey) throws -> String {
        guard let request = X509_REQ_new() else { throw RenewalError("out of memory") }
        defer { X509_REQ_free(request) }
        guard X509_REQ_set_version(request, 0) == 1,
              X509_REQ_set_subject_name(request, X509_get_subject_name(certificate.pointer)) == 1,
              X509_REQ_set_pubkey(request, key.pointer) == 1,
              X509_REQ_sign(request, key.pointer, EVP_sha256()) > 0 else {
            throw RenewalError("cannot make the request: \(OpenSSLErrors.describe(OpenSSLErrors.drain()))")
        }
        let pem = memoryBIOText { PEM_write_bio_X509_REQ($0, request) }
        guard !pem.isEmpty else { throw RenewalError("cannot write the request") }
        return pem
    }

    /// Writes `text` to a new file with `mode`; an existing file is never replaced. Throws a sentence.
    public static func writeNewFile(_ text: String, to path: String, mode: mode_t) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else {
            let reason = errno == EEXIST ? "it already exists, and is never overwritten" : String(cString: strerror(errno))
            throw RenewalError("cannot create \(path): \(reason)")
        }
        defer { close(fd) }
        fchmod(fd, mode)
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
            throw RenewalError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// What `write` put into a memory BIO, as text.
func memoryBIOText(_ write: (OpaquePointer) -> Int32) -> String {
    guard let bio = BIO_new(BIO_s_mem()) else { return "" }
    defer { BIO_free(bio) }
    guard write(bio) == 1 else {
        _ = OpenSSLErrors.drain()
        return ""
    }
    var data: UnsafeMutablePointer<CChar>?
    let n = mtls_BIO_get_mem_data(bio, &data)
    guard let data, n > 0 else { return "" }
    return String(decoding: UnsafeRawBufferPointer(start: data, count: n), as: UTF8.self)
}
