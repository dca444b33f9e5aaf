import CEventTLS
#if canImport(Glibc)
import Glibc
#endif

/// An X.509 certificate, owned: freed when the last reference goes.
public final class Certificate: @unchecked Sendable {
    public let pointer: OpaquePointer

    /// Takes ownership of `pointer`.
    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit { X509_free(pointer) }

    /// Every certificate in a PEM file, in file order.
    public static func loadPEMChain(path: String) throws -> [Certificate] {
        guard let bio = BIO_new_file(path, "r") else {
            _ = OpenSSLErrors.drain()
            throw TLSSetupError.unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        defer { BIO_free(bio) }
        return try readPEMChain(bio: bio, what: path)
    }

    public static func parsePEMChain(_ pem: String) throws -> [Certificate] {
        let bytes = Array(pem.utf8)
        guard let bio = bytes.withUnsafeBytes({ BIO_new_mem_buf($0.baseAddress, Int32($0.count)) }) else {
            throw TLSSetupError.invalidCertificate(path: "(memory)", reason: "out of memory")
        }
        defer { BIO_free(bio) }
        return try readPEMChain(bio: bio, what: "(memory)")
    }

    private static func readPEMChain(bio: OpaquePointer, what: String) throws -> [Certificate] {
        var chain: [Certificate] = []
        while let x509 = PEM_read_bio_X509(bio, nil, nil, nil) {
            chain.append(Certificate(taking: x509))
        }
        let errors = OpenSSLErrors.drain()
        // Reading stops with "no start line" at the end of the file; anything else is a broken certificate.
        let real = errors.filter { !($0.library == ERR_LIB_PEM && $0.reason == PEM_R_NO_START_LINE) }
        if !real.isEmpty {
            throw TLSSetupError.invalidCertificate(path: what, reason: OpenSSLErrors.describe(real))
        }
        if chain.isEmpty {
            throw TLSSetupError.invalidCertificate(path: what, reason: "no PEM certificate (-----BEGIN CERTIFICATE-----) found")
        }
        return chain
    }

    public var subject: String { Self.nameString(X509_get_subject_name(pointer)) }
    public var issuer: String { Self.nameString(X509_get_issuer_name(pointer)) }

    /// The serial number in upper-case hex, as `openssl x509 -serial` prints it.
    public var serialHex: String { Self.serialHex(of: pointer) }

    static func serialHex(of pointer: OpaquePointer) -> String {
        guard let asn1 = X509_get_serialNumber(pointer), let bn = ASN1_INTEGER_to_BN(asn1, nil) else { return "?" }
        defer { BN_free(bn) }
        guard let hex = BN_bn2hex(bn) else { return "?" }
        defer { mtls_OPENSSL_free(hex) }
        return String(cString: hex)
    }

    /// Seconds since 1970.
    public var notBefore: Int { Self.epoch(X509_get0_notBefore(pointer)) }
    public var notAfter: Int { Self.epoch(X509_get0_notAfter(pointer)) }

    public var sha256Fingerprint: String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        guard X509_digest(pointer, EVP_sha256(), &digest, &length) == 1 else { return "?" }
        return digest.prefix(Int(length)).map { b in
            let s = String(b, radix: 16, uppercase: true)
            return s.count == 1 ? "0" + s : s
        }.joined(separator: ":")
    }

    public var pem: String {
        guard let bio = BIO_new(BIO_s_mem()) else { return "" }
        defer { BIO_free(bio) }
        PEM_write_bio_X509(bio, pointer)
        var data: UnsafeMutablePointer<CChar>?
        let n = mtls_BIO_get_mem_data(bio, &data)
        guard let data, n > 0 else { return "" }
        return data.withMemoryRebound(to: UInt8.self, capacity: n) {
            String(decoding: UnsafeBufferPointer(start: $0, count: n), as: UTF8.self)
        }
    }

    /// Whether `issuer` signed this certificate (names match and the signature verifies).
    public func isIssued(by issuer: Certificate) -> Bool {
        X509_check_issued(issuer.pointer, pointer) == X509_V_OK
    }

    static func nameString(_ name: OpaquePointer?) -> String {
        guard let name, let bio = BIO_new(BIO_s_mem()) else { return "" }
        defer { BIO_free(bio) }
        X509_NAME_print_ex(bio, name, 0, mtls_XN_FLAG_RFC2253())
        var data: UnsafeMutablePointer<CChar>?
        let n = mtls_BIO_get_mem_data(bio, &data)
        guard let data, n > 0 else { return "" }
        return data.withMemoryRebound(to: UInt8.self, capacity: n) {
            String(decoding: UnsafeBufferPointer(start: $0, count: n), as: UTF8.self)
        }
    }

    static func epoch(_ time: UnsafePointer<ASN1_TIME>?) -> Int {
        guard let time else { return 0 }
        var t = tm()
        guard ASN1_TIME_to_tm(time, &t) == 1 else { return 0 }
        return Int(timegm(&t))
    }
}
