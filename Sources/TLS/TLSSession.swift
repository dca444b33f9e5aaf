import CEventTLS

/// The TLS side of one connection (to an upstream, or the client's end of an intercepted tunnel): the SSL object
/// a libevent OpenSSL bufferevent runs, and everything the proxy asks of it. The bufferevent owns the SSL and
/// frees it; this value keeps the context the SSL was made from alive at least as long as itself, and it is
/// dropped when the bufferevent is freed. Nothing outside the `TLS` module touches the SSL.
public struct TLSSession {
    let ssl: OpaquePointer
    /// The context (upstream client context or interception context) the SSL was made from.
    private let context: AnyObject

    init(ssl: OpaquePointer, context: AnyObject) {
        self.ssl = ssl
        self.context = context
    }

    /// Whether the peer ended its side with close_notify: a clean end of stream, not a truncation.
    public var receivedCloseNotify: Bool {
        SSL_get_shutdown(ssl) & Int32(SSL_RECEIVED_SHUTDOWN) != 0
    }

    /// Queues close_notify (the TLS end of stream) after everything written so far. With a filter bufferevent
    /// the alert goes into the layer below, which must then be flushed before the socket's write side is shut.
    public func sendCloseNotify() {
        guard SSL_get_shutdown(ssl) & Int32(SSL_SENT_SHUTDOWN) == 0, SSL_is_init_finished(ssl) == 1 else { return }
        _ = SSL_shutdown(ssl)
        _ = OpenSSLErrors.drain()
    }

    /// A libevent OpenSSL filter bufferevent over `underlying` that accepts a TLS client (the client's end of an
    /// intercepted tunnel). It takes the SSL over and frees it (with `BEV_OPT_CLOSE_ON_FREE` in `options`, the
    /// underlying bufferevent too). nil if libevent cannot make it: the SSL is still to be `discard`ed.
    public func makeServerFilter(base: OpaquePointer, over underlying: OpaquePointer,
                                 options: Int32) -> OpaquePointer? {
        bufferevent_openssl_filter_new(base, underlying, ssl, BUFFEREVENT_SSL_ACCEPTING, options)
    }

    /// Frees the SSL of a session that no bufferevent took over (set-up failed half-way).
    public func discard() {
        SSL_free(ssl)
    }

    /// The connection will be freed without close_notify (an abort): make OpenSSL say nothing more on it.
    public func markQuietShutdown() {
        SSL_set_quiet_shutdown(ssl, 1)
    }

    /// Whether the handshake has completed.
    public var handshakeFinished: Bool { SSL_is_init_finished(ssl) == 1 }

    public var version: String? {
        guard SSL_is_init_finished(ssl) == 1 else { return nil }
        return String(cString: SSL_get_version(ssl))
    }

    public var cipher: String? {
        guard SSL_is_init_finished(ssl) == 1, let c = SSL_get_current_cipher(ssl) else { return nil }
        return String(cString: SSL_CIPHER_get_name(c))
    }
}
