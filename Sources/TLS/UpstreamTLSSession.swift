import CEventTLS
#if canImport(Glibc)
import Glibc
#endif

/// The TLS client side of one connection to an upstream: the SSL object (SNI, hostname or IP verification,
/// the context's client certificate), the session it resumes and the ones it stores, when its handshake began,
/// what OpenSSL says about it, and the proxy's handshake, reads and writes over a socket (`attach`,
/// `handshake`, `read`, `write`). It owns the SSL from start to end: it is freed by `release` or with this
/// object, unless `handOver` gave it to a relay's bufferevent first. The socket is the caller's.
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
    /// Why the proxy refused the server's certificate (pin, revocation), set during the handshake.
    public private(set) var trustRefusal: TrustRefusal?
    /// For a `crl_fetch` route, during one verification of the server's chain: the distribution points whose CRL
    /// was looked up and not there, the points of the whole chain once it is known to verify apart from
    /// revocation, and whether the verification stopped to wait for a CRL being fetched.
    private(set) var missingCRLURLs: [String] = []
    private var chainURLs: [String]??
    var awaitingCRL = false {
        didSet { if !awaitingCRL { awaitedCRLURLs = [] } }
    }
    /// The distribution points whose first fetch the suspended handshake waits for.
    var awaitedCRLURLs: [String] = []
    /// Hard revocation on the data path may wait for the first fetch of a needed CRL (the handshake is suspended
    /// and `handshake()` says `.waitingForCRL`); the caller decides how long, then calls `stopWaitingForCRL`.
    /// Off by default: a caller that cannot wait (the `pins` command) gets the decision at once.
    public var mayWaitForCRL = false
    /// The `CRLCache` generation the handshake was verified under (a full handshake of a `crl_fetch` route): read
    /// when the SSL is made (a resumed session is not verified again), then again as each verification of the
    /// server's chain starts (one that waited for a CRL is verified under the generation that CRL brought).
    public private(set) var crlGeneration = 0
    /// What was allowed but should be logged (a pin mismatch in report-only mode, a missing CRL in soft mode).
    public private(set) var trustNotes: [TrustNote] = []
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
        if context.fetchesCRLs { crlGeneration = CRLCache.shared.generation }
        SSL_set_ex_data(ssl, Self.exDataIndex, Unmanaged.passUnretained(self).toOpaque())
        context.resumeSession(ssl, sessionKey: sessionKey)
        SSL_set_info_callback(ssl, upstreamTLSInfoCallback)
    }

    deinit {
        if let ssl {
            cutTies(ssl)
            SSL_free(ssl)
        }
    }

    /// Runs the TLS client over `fd`, a connected socket the caller owns and closes after `release`.
    public func attach(socket fd: Int32) -> Bool {
        guard let ssl else { return false }
        return SSL_set_fd(ssl, fd) == 1
    }

    /// The fd the handshake waits on while a token signature is made (the last `handshake()` said
    /// `.waitForSignature`); nil otherwise.
    public private(set) var signatureFD: Int32?

    /// One step of the handshake; call again when the socket is ready as `TLSHandshakeStep` says.
    public func handshake() -> TLSHandshakeStep {
        guard let ssl else { return .failed(errno: EBADF, errors: []) }
        signatureFD = nil
        ERR_clear_error()
        let r = SSL_connect(ssl)
        if r == 1 { return .done }
        switch Self.stop(ssl, r) {
        case .want(let read): return read ? .wantRead : .wantWrite
        case .signing:
            let fd = mtls_SSL_async_fd(ssl)
            if fd >= 0 { signatureFD = fd }
            return fd >= 0 ? .waitForSignature(fd: fd) : .failed(errno: 0, errors: OpenSSLErrors.drain())
        case .retryVerify: return .waitingForCRL
        case .closed: return .closed
        case .failed(let e, let errors): return .failed(errno: e, errors: errors)
        }
    }

    // MARK: the proxy's own reads and writes, after the handshake

    /// After the handshake: read-ahead lets one `read(2)` take a whole record, or several; writes may complete
    /// partly, from a buffer that moves.
    public func startDirectIO() {
        guard let ssl else { return }
        mtls_SSL_clear_mode_async(ssl)  // (token keys: only the handshake signs; reads and writes run as before)
        mtls_SSL_set_direct_io_modes(ssl)
    }

    /// Decrypted bytes, or records not yet decrypted, that OpenSSL holds: read again before waiting on the socket.
    public var hasBufferedInput: Bool {
        guard let ssl else { return false }
        return SSL_has_pending(ssl) == 1
    }

    /// Reads plaintext into `buffer`.
    public func read(into buffer: UnsafeMutableRawPointer, count: Int) -> TLSTransfer {
        guard let ssl else { return .failed(errno: EBADF, errors: []) }
        ERR_clear_error()
        let r = SSL_read(ssl, buffer, Int32(min(count, Int(Int32.max))))
        if r > 0 { return .bytes(Int(r)) }
        return Self.outcome(ssl, r)
    }

    /// Writes plaintext from `buffer` (partly, possibly: the count says how much went).
    public func write(_ buffer: UnsafeRawPointer, count: Int) -> TLSTransfer {
        guard let ssl else { return .failed(errno: EBADF, errors: []) }
        ERR_clear_error()
        let r = SSL_write(ssl, buffer, Int32(min(count, Int(Int32.max))))
        if r > 0 { return .bytes(Int(r)) }
        return Self.outcome(ssl, r)
    }

    private static func outcome(_ ssl: OpaquePointer, _ r: Int32) -> TLSTransfer {
        switch stop(ssl, r) {
        case .want, .signing, .retryVerify: return .wouldBlock
        case .closed(let closeNotify): return .closed(closeNotify: closeNotify)
        case .failed(let e, let errors): return .failed(errno: e, errors: errors)
        }
    }

    /// Why an `SSL_connect`, `SSL_read` or `SSL_write` that returned `r` (0 or less) stopped: the one reading of
    /// `SSL_get_error` and the error queue for the handshake, reads and writes.
    private enum Stop {
        /// Waiting on the socket, readable (`read`) or writable.
        case want(read: Bool)
        /// The handshake's job is paused while a signing thread asks the token (`TokenSigningThreads`).
        case signing
        /// The verification suspended the handshake (`SSL_set_retry_verify`): call again later.
        case retryVerify
        case closed(closeNotify: Bool)
        case failed(errno: Int32, errors: [OpenSSLErrorEntry])
    }

    private static func stop(_ ssl: OpaquePointer, _ r: Int32) -> Stop {
        let e = errno
        switch SSL_get_error(ssl, r) {
        case SSL_ERROR_WANT_READ:
            return .want(read: true)
        case SSL_ERROR_WANT_WRITE:
            return .want(read: false)
        case SSL_ERROR_WANT_ASYNC:
            return .signing
        case SSL_ERROR_WANT_RETRY_VERIFY:
            return .retryVerify
        case SSL_ERROR_ZERO_RETURN:
            return .closed(closeNotify: true)
        case SSL_ERROR_SYSCALL:
            let errors = OpenSSLErrors.drain()
            if e == 0 && errors.isEmpty { return .closed(closeNotify: false) }
            return .failed(errno: e, errors: errors)
        default:
            let errors = OpenSSLErrors.drain()
            let real = errors.filter { !$0.isPseudo }
            // OpenSSL 3 reports a close without close_notify as an error: an end of stream that may be a
            // truncation, which the HTTP framing judges.
            if !real.isEmpty && real.allSatisfy(\.isUnexpectedEOF) { return .closed(closeNotify: false) }
            return .failed(errno: 0, errors: errors)
        }
    }

    /// Hands the SSL, after its handshake, to a libevent OpenSSL bufferevent over `fd` (a relay after
    /// `101 Switching Protocols`), which owns both from then on. Plaintext OpenSSL already decrypted or buffered
    /// is first read into `pending`, because the bufferevent would not look for it until the socket is readable.
    /// nil if libevent cannot make it (the SSL is then still this object's).
    public func handOver(base: OpaquePointer, fd: Int32, pending: OpaquePointer) -> (bufferevent: OpaquePointer, session: TLSSession)? {
        guard let ssl else { return nil }
        var chunk = [UInt8](repeating: 0, count: 16384)
        while SSL_has_pending(ssl) == 1 {
            ERR_clear_error()
            let r = chunk.withUnsafeMutableBytes { SSL_read(ssl, $0.baseAddress, Int32($0.count)) }
            guard r > 0 else { _ = OpenSSLErrors.drain(); break }
            chunk.withUnsafeBytes { _ = evbuffer_add(pending, $0.baseAddress, Int(r)) }
        }
        SSL_set_read_ahead(ssl, 0)
        let options = Int32(BEV_OPT_CLOSE_ON_FREE.rawValue | BEV_OPT_DEFER_CALLBACKS.rawValue)
        guard let bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_OPEN, options) else { return nil }
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1)
        cutTies(ssl)
        self.ssl = nil
        return (bev, TLSSession(ssl: ssl, context: context))
    }

    /// Bytes received from the server so far; 0 means it never answered the TCP connect or the ClientHello.
    public var serverBytesRead: UInt64 {
        guard let ssl, let rbio = SSL_get_rbio(ssl) else { return 0 }
        return BIO_number_read(rbio)
    }

    /// The certificates the server sent, leaf first (also after a handshake its verification refused).
    public var presentedChain: [Certificate] {
        guard let ssl, let chain = SSL_get_peer_cert_chain(ssl) else { return [] }
        return (0..<mtls_sk_X509_num(chain)).compactMap { i in
            guard let x = mtls_sk_X509_value(chain, i), X509_up_ref(x) == 1 else { return nil }
            return Certificate(taking: x)
        }
    }

    /// Offers application protocols in ALPN (RFC 7301), most preferred first, e.g. `["h2", "http/1.1"]`. Before
    /// the handshake. False when OpenSSL refuses the list.
    public func offerApplicationProtocols(_ protocols: [String]) -> Bool {
        guard let ssl, !protocols.isEmpty else { return false }
        var wire: [UInt8] = []
        for name in protocols {
            let bytes = Array(name.utf8)
            guard !bytes.isEmpty, bytes.count < 256 else { return false }
            wire.append(UInt8(bytes.count))
            wire += bytes
        }
        // 0 is success here, unlike most of OpenSSL.
        return wire.withUnsafeBufferPointer { SSL_set_alpn_protos(ssl, $0.baseAddress, UInt32($0.count)) } == 0
    }

    /// The protocol the server selected in ALPN, once the handshake completed; nil when it selected none.
    public var selectedApplicationProtocol: String? {
        guard let ssl else { return nil }
        var data: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
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
            errors: errors, socketErrno: errno, closed: closed, trustRefusal: handshakeCompleted ? nil : trustRefusal,
            crlSources: .init(context.trust))
    }

    /// For a connection given up while its token signature is made: cuts the SSL off the socket (the caller
    /// closes it) and returns the fd to wait on; once it is readable, `finishAbandonedHandshake` lets the paused
    /// handshake end (OpenSSL 3.0 would never reclaim a paused job freed with its SSL). nil when not waiting.
    public func abandonWhileSigning() -> Int32? {
        guard let ssl, let fd = signatureFD, mtls_SSL_cut_off_socket(ssl) == 1 else { return nil }
        TokenSigningThreads.shared.giveUp(signatureFD: fd)  // (not signed at all if no thread took it yet)
        return fd
    }

    /// Resumes an abandoned handshake after its signature (it ends on the null BIO); nil when it is done and
    /// released, else the fd of another signature to wait for.
    public func finishAbandonedHandshake() -> Int32? {
        if case .waitForSignature(let fd) = handshake() { return fd }
        _ = OpenSSLErrors.drain()
        release(sendCloseNotify: false)
        return nil
    }

    /// Frees the SSL, after a close_notify where possible when `sendCloseNotify` (a connection whose handshake
    /// completed). The caller closes the socket after.
    public func release(sendCloseNotify: Bool) {
        guard let ssl else { return }
        self.ssl = nil
        cutTies(ssl)
        if sendCloseNotify {
            ERR_clear_error()
            SSL_set_shutdown(ssl, SSL_RECEIVED_SHUTDOWN)
            SSL_shutdown(ssl)
            _ = OpenSSLErrors.drain()
        }
        SSL_free(ssl)
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

    /// Stop waiting for CRLs: the next `handshake()` decides on what is there.
    public func stopWaitingForCRL() { mayWaitForCRL = false }

    /// While the handshake waits for CRLs: whether their first fetch is still under way (a lock and a lookup, no
    /// verification), so that the caller retries the handshake only once there is something new to verify with.
    public var stillAwaitingCRL: Bool {
        mayWaitForCRL && awaitedCRLURLs.contains { CRLCache.shared.awaitingFirstFetch($0) }
    }

    func startCRLRound() {
        crlGeneration = CRLCache.shared.generation
        missingCRLURLs = []
        chainURLs = nil
        awaitingCRL = false
    }

    func noteMissingCRL(_ url: String) {
        if !missingCRLURLs.contains(url) { missingCRLURLs.append(url) }
    }

    /// The distribution points of the chain being verified if it verifies apart from revocation (nil otherwise),
    /// worked out once per verification.
    func chainCRLURLs(_ storeCtx: OpaquePointer) -> [String]? {
        if let known = chainURLs { return known }
        let urls = distributionPointsOfChainVerifiedBeforeRevocation(storeCtx, leafOnly: context.trust.revocationScope == .leaf)
        chainURLs = .some(urls)
        return urls
    }

    func refuse(_ refusal: TrustRefusal) {
        if trustRefusal == nil { trustRefusal = refusal }
    }

    func note(_ note: TrustNote) { trustNotes.append(note) }

    static func owner(of ssl: OpaquePointer) -> UpstreamTLSSession? {
        guard let data = SSL_get_ex_data(ssl, exDataIndex) else { return nil }
        return Unmanaged<UpstreamTLSSession>.fromOpaque(data).takeUnretainedValue()
    }

    /// Called by OpenSSL with each new client session (after the handshake; with TLS 1.3, when a ticket
    /// arrives): the context keeps it for this upstream. Returns whether the context took the reference.
    fileprivate static func store(_ session: OpaquePointer, of ssl: OpaquePointer) -> Bool {
        guard let owner = owner(of: ssl) else { return false }
        owner.context.storeSession(session, sessionKey: owner.sessionKey, generation: owner.crlGeneration)
        return true
    }
}

/// Where a handshake stands after one step.
public enum TLSHandshakeStep {
    case done
    case wantRead
    case wantWrite
    /// The token key's signature is being made on a signing thread: call again when `fd` is readable.
    case waitForSignature(fd: Int32)
    /// Hard revocation waits for the first fetch of a CRL it needs (`mayWaitForCRL`): call again shortly, or
    /// after `stopWaitingForCRL` for the decision without it.
    case waitingForCRL
    /// The server closed the connection during the handshake.
    case closed
    case failed(errno: Int32, errors: [OpenSSLErrorEntry])
}

/// What one read or write on an upstream TLS connection came to.
public enum TLSTransfer {
    case bytes(Int)
    /// Nothing more until the socket is ready again.
    case wouldBlock
    /// The server ended the stream: with close_notify, or without (a FIN alone, possibly a truncation).
    case closed(closeNotify: Bool)
    case failed(errno: Int32, errors: [OpenSSLErrorEntry])
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
