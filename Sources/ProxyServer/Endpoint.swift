import CEventTLS
import TLS
#if canImport(Glibc)
import Glibc
#endif

/// One end of a proxied connection as the data path sees it: the bufferevent it reads and writes and, when TLS
/// runs on it, the TLS session and (for a TLS filter over a socket, as in interception) the layer below. A close
/// goes through `flushStep`, which empties every layer, sends close_notify, and only then shuts the socket's
/// write side, so that no byte queued below the top layer is lost.
struct Endpoint {
    /// The bufferevent the proxy reads and writes (the TLS filter, when there is one).
    private(set) var bev: OpaquePointer
    /// The socket bufferevent under a TLS filter; nil when `bev` is the socket's own.
    private(set) var lower: OpaquePointer?
    private(set) var tls: TLSSession?

    init(bev: OpaquePointer, lower: OpaquePointer? = nil, tls: TLSSession? = nil) {
        self.bev = bev
        self.lower = lower
        self.tls = tls
    }

    var input: OpaquePointer { bufferevent_get_input(bev) }
    var output: OpaquePointer { bufferevent_get_output(bev) }
    var fd: Int32 { bufferevent_getfd(lower ?? bev) }

    /// Puts a TLS filter on top: from now on the proxy reads and writes plaintext through `filter`.
    mutating func wrap(filter: OpaquePointer, tls: TLSSession) {
        lower = bev
        bev = filter
        self.tls = tls
    }

    enum FlushStep {
        /// Bytes are still queued in some layer: call again when the top layer drained, or a moment later.
        case pending(belowTop: Bool)
        /// Everything is with the kernel, close_notify included, and the write side is shut (FIN).
        case shut
    }

    /// One step of an orderly close of the write side. Call it until it says `.shut`.
    func flushStep() -> FlushStep {
        if evbuffer_get_length(output) > 0 { return .pending(belowTop: false) }
        if let tls { tls.sendCloseNotify() }
        if let lower, evbuffer_get_length(bufferevent_get_output(lower)) > 0 {
            bufferevent_enable(lower, Int16(EV_WRITE))  // a filter that failed may have stopped its lower layer
            return .pending(belowTop: true)
        }
        let fd = self.fd
        if fd >= 0 { shutdown(fd, Int32(SHUT_WR)) }
        return .shut
    }

    /// Frees every layer now. With `reset`, the peer gets a TCP reset rather than a FIN, and no close_notify:
    /// a response cut short must never look complete.
    func free(reset: Bool) {
        let fd = self.fd
        if reset, fd >= 0 {
            var off = linger(l_onoff: 1, l_linger: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, socklen_t(MemoryLayout<linger>.size))
            tls?.markQuietShutdown()
        }
        bufferevent_setcb(bev, nil, nil, nil, nil)
        // A filter was made with BEV_OPT_CLOSE_ON_FREE: freeing it frees the socket bufferevent too.
        bufferevent_free(bev)
    }
}
