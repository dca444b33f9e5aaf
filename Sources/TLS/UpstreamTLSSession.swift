import CEventTLS
#if canImport(Glibc)
import Glibc
#endif

/// The TLS client side of one connection to an upstream: the SSL object (SNI, hostname or IP verification,
/// the context's client certificate), the session it resumes and the ones it stores, when its handshake began,
/// and what OpenSSL says about it. It owns the SSL until a bufferevent takes it over
/// (`makeSocketBufferevent`); from then on the bufferevent frees the SSL, and this object only reads it, until
/// `release` or `handOver` cuts the SSL's ties to it.
///
/// OpenSSL's callbacks (handshake start, new session) find this object through the SSL's ex_data, under an
/// index from `SSL_get_ex_new_index`; the pointer is unretained, so it is cleared before this object can go.
public final class UpstreamTLSSession {
    public let context: ClientTLSContext
    public let host: String
    public let port: Int
    /// Which of the context's sessions this connection resumes and where its new ones go ("host:port@address").
    let sessionKey: String
    /// nil once released or handed over.
    private var ssl: OpaquePointer?
    /// Whether a bufferevent owns the SSL (and frees it).
    private var owned = false
    /// When OpenSSL began the handshake (CLOCK_MONOTONIC, µs), that is when the TCP connection was up; 0 before.
    public private(set) var handshakeStartedMicros = 0

    /// The SSL ex_data slot that points at the `UpstreamTLSSession` of an SSL.
    static let exDataIndex: Int32 = mtls_SSL_get_ex_new_index()

    /// A new SSL for `host` (see `ClientTLSContext.makeSSL`), offering the last session made for `sessionKey`
    /// with the same context. nil when the SSL cannot be made with its checks: the caller answers 502.
    public init?(context: ClientTLSContext, host: String, port: Int, sessionKey: String) {
        guard let ssl = context.makeSSL(host: host) else { return nil }
        self.context = context
        self.host = host
        self.port = port
        self.sessionKey = sessionKey
        self.ssl = ssl
        SSL_set_ex_data(ssl, Self.exDataIndex, Unmanaged.passUnretained(self).toOpaque())
        context.resumeSession(ssl, sessionKey: sessionKey)
        SSL_set_info_callback(ssl, upstreamTLSInfoCallback)
    }

    deinit {
        // An SSL no bufferevent took over is still ours.
        if let ssl, !owned {
            SSL_set_ex_data(ssl, Self.exDataIndex, nil)
            SSL_free(ssl)
        }
    }

    /// A libevent OpenSSL bufferevent that will connect the TLS client over a socket set later (-1 for now),
    /// and that owns the SSL from here on (with `BEV_OPT_CLOSE_ON_FREE` in `options`, it frees it). A close
    /// without close_notify is passed up as an error, which `OpenSSLErrors.drain(bufferevent:)` then shows as
    /// unexpected EOF. nil if libevent cannot make it; the SSL is then freed with this object.
    ///
    /// It is made here, not in the proxy's connection code, because it is the hand-over of the SSL's ownership.
    public func makeSocketBufferevent(base: OpaquePointer, options: Int32) -> OpaquePointer? {
        guard let ssl, !owned,
              let bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, options)
        else { return nil }
        owned = true
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1)
        return bev
    }

    /// Bytes received from the server so far; 0 means it never answered the TCP connect or the ClientHello.
    public var serverBytesRead: UInt64 {
        guard let ssl, let rbio = SSL_get_rbio(ssl) else { return 0 }
        return BIO_number_read(rbio)
    }

    /// Whether the handshake resumed an earlier TLS session.
    public var sessionReused: Bool {
        guard let ssl else { return false }
        return SSL_session_reused(ssl) == 1
    }

    /// The protocol version, once the caller knows the handshake completed.
    public var version: String? {
        guard let ssl else { return nil }
        return String(cString: SSL_get_version(ssl))
    }

    /// The cipher, once the caller knows the handshake completed.
    public var cipher: String? {
        guard let ssl, let c = SSL_get_current_cipher(ssl) else { return nil }
        return String(cString: SSL_CIPHER_get_name(c))
    }

    /// Whether the server ended its side with close_notify: a clean end of stream, not a truncation.
    public var receivedCloseNotify: Bool {
        guard let ssl else { return false }
        return SSL_get_shutdown(ssl) & Int32(SSL_RECEIVED_SHUTDOWN) != 0
    }

    /// The certificate verification result (`SSL_get_verify_result`, 0 is X509_V_OK) and OpenSSL's text for it.
    public var verifyResult: (code: Int, message: String) {
        guard let ssl else { return (0, "") }
        let code = SSL_get_verify_result(ssl)
        return (Int(code), String(cString: X509_verify_cert_error_string(code)))
    }

    /// What OpenSSL and the socket said about a failure, for the proxy to turn into a response.
    public func failure(handshakeCompleted: Bool, errors: [OpenSSLErrorEntry], errno: Int32,
                        closed: Bool) -> UpstreamTLSFailure {
        let verify = verifyResult
        return UpstreamTLSFailure(
            phase: handshakeCompleted ? .afterHandshake : .handshake,
            host: host, port: port,
            identity: context.identityName, certificateSubject: context.credential?.leaf.subject,
            verifyResult: handshakeCompleted ? 0 : verify.code, verifyMessage: verify.message,
            errors: errors, socketErrno: errno, closed: closed)
    }

    /// Gives the SSL over as a plain `TLSSession` (for a relay after an upgrade); this object lets go of it.
    public func handOver() -> TLSSession? {
        guard let ssl else { return nil }
        cutTies(ssl)
        self.ssl = nil
        return TLSSession(ssl: ssl, context: context)
    }

    /// Lets go of the SSL before its bufferevent is freed; it may outlive this object inside libevent for a
    /// moment, so it keeps no pointer to it. With `sendCloseNotify` (a connection whose handshake completed),
    /// a close_notify goes out where possible.
    public func release(sendCloseNotify: Bool) {
        guard let ssl else { return }
        cutTies(ssl)
        if sendCloseNotify {
            SSL_set_shutdown(ssl, SSL_RECEIVED_SHUTDOWN)
            SSL_shutdown(ssl)
        }
        if owned { self.ssl = nil }
    }

    private func cutTies(_ ssl: OpaquePointer) {
        SSL_set_info_callback(ssl, nil)
        SSL_set_ex_data(ssl, Self.exDataIndex, nil)
    }

    fileprivate func handshakeStarted() {
        guard handshakeStartedMicros == 0 else { return }
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        handshakeStartedMicros = Int(ts.tv_sec) * 1_000_000 + Int(ts.tv_nsec) / 1000
    }

    fileprivate static func owner(of ssl: OpaquePointer) -> UpstreamTLSSession? {
        guard let data = SSL_get_ex_data(ssl, exDataIndex) else { return nil }
        return Unmanaged<UpstreamTLSSession>.fromOpaque(data).takeUnretainedValue()
    }

    /// Called by OpenSSL with each new client session (after the handshake; with TLS 1.3, when a ticket
    /// arrives): the context keeps it for this upstream. Returns whether the context took the reference.
    fileprivate static func store(_ session: OpaquePointer, of ssl: OpaquePointer) -> Bool {
        guard let owner = owner(of: ssl) else { return false }
        owner.context.storeSession(session, sessionKey: owner.sessionKey)
        return true
    }
}

/// OpenSSL's info callback: notes when the handshake began (the access log's TCP and TLS timings).
private func upstreamTLSInfoCallback(_ ssl: OpaquePointer?, _ where_: Int32, _ ret: Int32) {
    guard where_ & SSL_CB_HANDSHAKE_START != 0, let ssl, let owner = UpstreamTLSSession.owner(of: ssl) else { return }
    owner.handshakeStarted()
}

/// OpenSSL's new-session callback, set on every `ClientTLSContext`. Returning 1 keeps the reference, which the
/// context then owns.
func clientNewSessionCallback(_ ssl: OpaquePointer?, _ session: OpaquePointer?) -> Int32 {
    guard let ssl, let session else { return 0 }
    return UpstreamTLSSession.store(session, of: ssl) ? 1 : 0
}
