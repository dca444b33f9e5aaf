import CEventTLS
import TLS
#if canImport(Glibc)
import Glibc
#endif

/// One end of a proxied connection as the data path sees it: a `SocketStream` the proxy drives itself (a plain
/// client socket), or a bufferevent and, when TLS runs on it, the TLS session and (for a TLS filter over a socket,
/// as in interception) the layer below. A close goes through `flushStep`, which empties every layer, sends
/// close_notify, and only then shuts the socket's write side, so that no byte queued below the top layer is lost.
/// Tunnels, relays and interception run on bufferevents: `makeBufferevent` moves a stream onto one first.
struct Endpoint {
    private(set) var stream: SocketStream?
    /// The bufferevent the proxy reads and writes (the TLS filter, when there is one); nil for a stream.
    private var event: OpaquePointer?
    /// The socket bufferevent under a TLS filter; nil when `bev` is the socket's own.
    private(set) var lower: OpaquePointer?
    private(set) var tls: TLSSession?

    init(bev: OpaquePointer, lower: OpaquePointer? = nil, tls: TLSSession? = nil) {
        self.event = bev
        self.lower = lower
        self.tls = tls
    }

    init(stream: SocketStream) {
        self.stream = stream
    }

    /// An endpoint that holds nothing: what is left where one was handed over.
    private init() {}

    /// Holds nothing: freed, or handed over.
    var isEmpty: Bool { stream == nil && event == nil }

    /// Gives this endpoint to a new owner (a relay, which frees it when it ends), leaving this copy empty, so
    /// that no bufferevent the new owner frees is left here to be used or freed again.
    mutating func handOver() -> Endpoint {
        let endpoint = self
        self = Endpoint()
        return endpoint
    }

    /// The bufferevent; only for an endpoint that has one (see `makeBufferevent`).
    var bev: OpaquePointer { event! }
    var isStream: Bool { stream != nil }

    var input: OpaquePointer { stream?.input ?? bufferevent_get_input(event!) }
    var output: OpaquePointer { stream?.output ?? bufferevent_get_output(event!) }
    var fd: Int32 {
        if let stream { return stream.fd }
        guard let bev = lower ?? event else { return -1 }
        return bufferevent_getfd(bev)
    }

    /// Routes the endpoint's callbacks to `handler`, with the data path's watermarks and `readTimeoutMillis`,
    /// and starts reading.
    func start(handler: EventHandler, readTimeoutMillis: Int) {
        if let stream {
            stream.owner = handler
            stream.readHighWatermark = Worker.readHighWatermark
            stream.writeLowWatermark = Worker.writeLowWatermark
            stream.setReadTimeout(millis: readTimeoutMillis)
            stream.enableRead()
            return
        }
        let bev = self.bev
        handler.setCallbacks(bev)
        bufferevent_setwatermark(bev, Int16(EV_READ), 0, Worker.readHighWatermark)
        bufferevent_setwatermark(bev, Int16(EV_WRITE), Worker.writeLowWatermark, 0)
        mtls_bufferevent_set_timeouts_ms(bev, readTimeoutMillis, 0)
        bufferevent_enable(bev, Int16(EV_READ | EV_WRITE))
    }

    func enableRead() {
        if let stream { stream.enableRead() } else { bufferevent_enable(bev, Int16(EV_READ)) }
    }

    func disableRead() {
        if let stream { stream.disableRead() } else { bufferevent_disable(bev, Int16(EV_READ)) }
    }

    /// The read timeout from now (0: none).
    func setReadTimeout(millis: Int) {
        if let stream { stream.setReadTimeout(millis: millis) } else { mtls_bufferevent_set_timeouts_ms(bev, millis, 0) }
    }

    /// The write callback comes only once the output is down to `bytes`.
    func setWriteLowWatermark(_ bytes: Int) {
        if let stream { stream.writeLowWatermark = bytes } else { bufferevent_setwatermark(bev, Int16(EV_WRITE), bytes, 0) }
    }

    /// Moves a stream's socket and buffered bytes onto a socket bufferevent (for a relay or a TLS filter), with
    /// no callbacks set. False if libevent cannot make it; the stream is then closed.
    mutating func makeBufferevent(base: OpaquePointer) -> Bool {
        guard let stream else { return true }
        self.stream = nil
        let fd = stream.releaseSocket()
        guard fd >= 0, let bev = bufferevent_socket_new(base, fd, Int32(BEV_OPT_CLOSE_ON_FREE.rawValue | BEV_OPT_DEFER_CALLBACKS.rawValue)) else {
            if fd >= 0 { close(fd) }
            return false
        }
        Self.move(input: stream.input, output: stream.output, to: bev)
        event = bev
        return true
    }

    /// Moves bytes read and not yet used, and bytes queued and not yet sent, into a new bufferevent's buffers.
    /// (A socket bufferevent keeps its input's end frozen between its own reads: it is thawed for the move.)
    static func move(input: OpaquePointer, output: OpaquePointer, to bev: OpaquePointer) {
        let bevInput = bufferevent_get_input(bev)
        if evbuffer_get_length(input) > 0 && evbuffer_add_buffer(bevInput, input) != 0 {
            evbuffer_unfreeze(bevInput, 0)
            evbuffer_add_buffer(bevInput, input)
            evbuffer_freeze(bevInput, 0)
        }
        evbuffer_add_buffer(bufferevent_get_output(bev), output)
    }

    /// Puts a TLS filter on top: from now on the proxy reads and writes plaintext through `filter`.
    mutating func wrap(filter: OpaquePointer, tls: TLSSession) {
        lower = event
        event = filter
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
    /// a response cut short must never look complete. The endpoint is left empty: freeing it again does nothing.
    mutating func free(reset: Bool) {
        defer { self = Endpoint() }
        let fd = self.fd
        if reset, fd >= 0 {
            var off = linger(l_onoff: 1, l_linger: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, socklen_t(MemoryLayout<linger>.size))
            tls?.markQuietShutdown()
        }
        if let stream {
            stream.close()
            return
        }
        guard let event else { return }  // a stream whose move onto a bufferevent failed is closed already
        bufferevent_setcb(event, nil, nil, nil, nil)
        // A filter was made with BEV_OPT_CLOSE_ON_FREE: freeing it frees the socket bufferevent too.
        bufferevent_free(event)
    }
}
