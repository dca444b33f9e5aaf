import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// The TLS side of fetching a CRL from an `https://` distribution point: one blocking exchange (with deadlines)
/// over a socket the fetcher connected, on that fetch's own thread, never on the request path.
///
/// The server is verified against the system trust store (OpenSSL's default paths, which `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` override) and the URL's host name, with TLS 1.2 or later. Not against a route's `ca_file`: that
/// bundle says which CAs issue the *service's* certificate, while a distribution point is a CA's web server,
/// shared by every route whose chain names it. A CRL is signed by its issuer and OpenSSL checks that signature
/// before using it, so TLS adds no trust to what is fetched; it is verified anyway, so that nothing is ever
/// fetched over TLS that was not checked: a server that fails verification is a failed fetch, named in the
/// "CRL unavailable" answer.
public enum DistributionPointTLS {
    /// One context for every fetch, made at the first one; nil (with OpenSSL's reason) if it cannot be made.
    /// (Read-only after it is made, shared by the fetches' threads: an SSL_CTX is safe to share across threads.)
    nonisolated(unsafe) private static let context: Result<OpaquePointer, TLSFetchError> = {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else {
            return .failure(TLSFetchError(text: "no TLS context: \(OpenSSLErrors.describe(OpenSSLErrors.drain()))"))
        }
        mtls_SSL_CTX_set_default_options(ctx)
        _ = mtls_SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
        guard SSL_CTX_set_default_verify_paths(ctx) == 1 else {
            let why = OpenSSLErrors.describe(OpenSSLErrors.drain())
            SSL_CTX_free(ctx)
            return .failure(TLSFetchError(text: "cannot load the system trust store: \(why)"))
        }
        // A server that closes without close_notify ends the answer; Content-Length catches a truncated one.
        mtls_SSL_CTX_ignore_unexpected_eof(ctx)
        _ = OpenSSLErrors.drain()
        return .success(ctx)
    }()

    public struct TLSFetchError: Error, Sendable {
        public var text: String
    }

    /// Runs TLS over `fd` (connected, non-blocking) for `host`, sends `request` and reads the answer until the
    /// server closes, all before `deadline` (CLOCK_MONOTONIC milliseconds), at most `maxBytes`.
    public static func exchange(fd: Int32, host: String, request: [UInt8], deadline: Int, maxBytes: Int) -> Result<[UInt8], TLSFetchError> {
        let ctx: OpaquePointer
        switch context {
        case .success(let c): ctx = c
        case .failure(let e): return .failure(e)
        }
        guard !host.utf8.contains(0), let ssl = SSL_new(ctx) else { return .failure(TLSFetchError(text: "no TLS connection for \(host)")) }
        defer {
            SSL_free(ssl)
            _ = OpenSSLErrors.drain()
        }
        let named: Bool
        if IPAddress(host) != nil {
            named = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1
        } else {
            named = mtls_SSL_set_tlsext_host_name(ssl, host) == 1 && SSL_set1_host(ssl, host) == 1
        }
        guard named, SSL_set_fd(ssl, fd) == 1 else { return .failure(TLSFetchError(text: "cannot set up TLS for \(host)")) }

        func wait(_ events: Int32) -> Bool {
            var p = pollfd(fd: fd, events: Int16(events), revents: 0)
            let left = deadline - monotonicMillis()
            return left > 0 && poll(&p, 1, Int32(left)) == 1
        }
        /// Waits as OpenSSL asks after a call that returned `r`; false when it failed or the deadline passed.
        func waitAfter(_ r: Int32) -> Bool? {
            switch SSL_get_error(ssl, r) {
            case SSL_ERROR_WANT_READ: return wait(POLLIN)
            case SSL_ERROR_WANT_WRITE: return wait(POLLOUT)
            default: return nil
            }
        }

        while true {
            ERR_clear_error()
            let r = SSL_connect(ssl)
            if r == 1 { break }
            switch waitAfter(r) {
            case true?: continue
            case false?: return .failure(TLSFetchError(text: "no TLS handshake with \(host) within the timeout"))
            case nil:
                let verify = SSL_get_verify_result(ssl)
                if verify != X509_V_OK {
                    return .failure(TLSFetchError(text: "TLS verification of \(host) failed: \(String(cString: X509_verify_cert_error_string(verify))) (checked against the system trust store)"))
                }
                let errors = OpenSSLErrors.drain().filter { !$0.isPseudo }
                return .failure(TLSFetchError(text: "TLS handshake with \(host) failed\(errors.isEmpty ? "" : ": \(OpenSSLErrors.describe(errors))")"))
            }
        }
        var sent = 0
        while sent < request.count {
            ERR_clear_error()
            let r = request.withUnsafeBytes { SSL_write(ssl, $0.baseAddress! + sent, Int32($0.count - sent)) }
            if r > 0 { sent += Int(r); continue }
            guard waitAfter(r) == true else { return .failure(TLSFetchError(text: "\(host) did not take the request over TLS")) }
        }
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            ERR_clear_error()
            let r = chunk.withUnsafeMutableBytes { SSL_read(ssl, $0.baseAddress, Int32($0.count)) }
            if r > 0 {
                answer += chunk[0..<Int(r)]
                guard answer.count <= maxBytes else { return .failure(TLSFetchError(text: "the answer from \(host) is larger than \(maxBytes / 1024 / 1024) MiB")) }
                continue
            }
            let code = SSL_get_error(ssl, r)
            if code == SSL_ERROR_ZERO_RETURN || (code == SSL_ERROR_SYSCALL && OpenSSLErrors.drain().isEmpty) { return .success(answer) }
            switch waitAfter(r) {
            case true?: continue
            case false?: return .failure(TLSFetchError(text: "\(host) did not answer within response_timeout"))
            case nil:
                return .failure(TLSFetchError(text: "reading from \(host) over TLS: \(OpenSSLErrors.describe(OpenSSLErrors.drain()))"))
            }
        }
    }

    private static func monotonicMillis() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
    }
}
