import CEventTLS
import TLS
#if canImport(Glibc)
import Glibc
#endif

/// A socket the proxy drives itself, plain or TLS (an upstream connection after its handshake): an input and an
/// output evbuffer, one persistent read event, a write event made the first time the kernel would block, and
/// nothing else. It does what a libevent
/// bufferevent does for the data path, with fewer system calls per exchange:
/// - output is written at the end of the loop iteration that queued it (`StreamFlusher`), straight to the
///   socket; `EV_WRITE` is armed only when the kernel would block, so an exchange costs no `epoll_ctl`;
/// - a read takes a fixed-size reserve, without asking `ioctl(FIONREAD)` first; a TLS read takes whole records
///   with read-ahead, and stops once OpenSSL holds nothing more (the level-triggered read event says when
///   there is more);
/// - the read event stays registered across exchanges, and its timeout (the read timeout) is reset by each read.
///
/// The owner (an `EventHandler`) gets the same callbacks, with the same `BEV_EVENT_*` flags, as from a
/// bufferevent: `streamReadable`, `streamWritable` (output at or below the write low watermark after a write),
/// `streamEvent` (EOF, error or timeout, each with `BEV_EVENT_READING` or `BEV_EVENT_WRITING`). Reading stops
/// by itself on EOF, error, timeout, and while the input holds the read high watermark.
final class SocketStream {
    enum Transport {
        case plain
        case tls(UpstreamTLSSession)
    }

    /// -1 until `activate` (an upstream connection queues its request head while it connects).
    private(set) var fd: Int32 = -1
    private(set) var transport: Transport = .plain
    let input: OpaquePointer
    let output: OpaquePointer
    /// Unowned(unsafe). The rule: an owner clears this (`close`, or setting nil) before it goes, so no callback
    /// reaches a freed owner; checked in debug builds by the owners' `deinit` (a client connection asserts its
    /// side was let go of, an upstream connection that it was closed). A checked `unowned` costs an atomic pair at
    /// each of about 8 uses per request (see `ClientConnection.worker` for the measurement).
    unowned(unsafe) var owner: EventHandler?
    private let flusher: StreamFlusher
    private var readEvent: OpaquePointer?
    private var writeEvent: OpaquePointer?
    /// The owner wants to read.
    private var readEnabled = false
    /// Reading stopped because the input holds `readHighWatermark` bytes.
    private var readSuspended = false
    private var readEventAdded = false
    /// How many times reading ended (EOF or error) and the owner was told.
    private var readEnds = 0
    private var writeArmed = false
    private var inputWatch: OpaquePointer?
    /// In the flusher's list for the end of this loop iteration.
    fileprivate var flushScheduled = false
    private(set) var closed = false
    var readTimeoutMillis = 0
    var readHighWatermark = 0
    var writeLowWatermark = 0
    /// The last error seen, for the owner's `streamEvent`.
    private(set) var lastErrno: Int32 = 0
    private(set) var lastTLSErrors: [OpenSSLErrorEntry] = []

    /// How much one read asks for.
    static let readReserve = 16384
    /// How much plaintext one readable event takes from a TLS connection: the records one read-ahead of 64 KiB
    /// brought in.
    static let tlsReadReserve = 65536

    init(flusher: StreamFlusher) {
        self.flusher = flusher
        input = evbuffer_new()
        output = evbuffer_new()
        evbuffer_add_cb(output, streamOutputChanged, Unmanaged.passUnretained(self).toOpaque())
    }

    /// A stream over a connected socket.
    convenience init(fd: Int32, flusher: StreamFlusher, base: OpaquePointer) {
        self.init(flusher: flusher)
        activate(fd: fd, transport: .plain, base: base)
    }

    deinit {
        close()
        evbuffer_free(input)
        evbuffer_free(output)
    }

    /// Starts driving `fd`: from here on, queued output is written and reads follow `enableRead`.
    func activate(fd: Int32, transport: Transport, base: OpaquePointer) {
        precondition(self.fd < 0 && !closed)
        self.fd = fd
        self.transport = transport
        let me = Unmanaged.passUnretained(self).toOpaque()
        readEvent = event_new(base, fd, Int16(EV_READ | EV_PERSIST), streamReadCallback, me)
        if readEnabled { updateReadEvent() }
        if evbuffer_get_length(output) > 0 { scheduleFlush() }
    }

    // MARK: what the owner asks

    func enableRead() {
        guard !readEnabled else { return }
        readEnabled = true
        updateReadEvent()
    }

    func disableRead() {
        guard readEnabled else { return }
        readEnabled = false
        updateReadEvent()
    }

    var isReading: Bool { readEnabled }

    /// The read timeout, from now (0: none).
    /// libevent's `event_add` without a timeout keeps one already pending: "none" removes it explicitly, or a
    /// connection's idle timeout would go on running under the stream that came after it.
    func setReadTimeout(millis: Int) {
        readTimeoutMillis = millis
        guard readEventAdded, let readEvent else { return }
        if millis > 0 { _ = mtls_event_add_ms(readEvent, millis) } else { _ = event_remove_timer(readEvent) }
    }

    /// Frees the events, closes the socket (a TLS stream's SSL is its session's, freed by its owner first) and
    /// drops queued output. The evbuffers live as long as this object.
    func close() {
        guard !closed else { return }
        closed = true
        owner = nil
        if let readEvent { event_free(readEvent) }
        if let writeEvent { event_free(writeEvent) }
        readEvent = nil
        writeEvent = nil
        removeInputWatch()
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Gives up the socket without closing it (it goes on in a bufferevent): the events are freed, the buffers
    /// stay for the caller to move.
    func releaseSocket() -> Int32 {
        let fd = self.fd
        self.fd = -1
        close()
        return fd
    }

    // MARK: reading

    private func updateReadEvent() {
        guard let readEvent else { return }
        let want = readEnabled && !readSuspended
        if want && !readEventAdded {
            readEventAdded = true
            _ = mtls_event_add_ms(readEvent, readTimeoutMillis)
            // Bytes OpenSSL read ahead (left when reading stopped) will not make the socket readable again.
            if case .tls(let session) = transport, session.hasBufferedInput { event_active(readEvent, EV_READ, 1) }
        } else if !want && readEventAdded {
            readEventAdded = false
            event_del(readEvent)
        }
    }

    fileprivate func readReady(_ what: Int16) {
        if Int32(what) & EV_TIMEOUT != 0 {
            readEnabled = false
            updateReadEvent()
            owner?.streamEvent(self, Int16(BEV_EVENT_READING | BEV_EVENT_TIMEOUT))
            return
        }
        // Made active (bytes buffered in OpenSSL) and then paused by the owner in the same loop turn: wait.
        guard readEnabled, !readSuspended, !closed else { return }
        var room = Self.readReserve
        if case .tls = transport { room = Self.tlsReadReserve }
        if readHighWatermark > 0 {
            let held = evbuffer_get_length(input)
            if held >= readHighWatermark {
                suspendReading()
                return
            }
            room = min(room, readHighWatermark - held)
        }
        var got = 0
        var end: Int16 = 0
        switch transport {
        case .plain:
            var vec = iovec()
            guard evbuffer_reserve_space(input, room, &vec, 1) == 1 else { return }
            let n = Glibc.read(fd, vec.iov_base, min(vec.iov_len, room))
            if n > 0 {
                vec.iov_len = n
                evbuffer_commit_space(input, &vec, 1)
                got = n
            } else if n == 0 {
                end = Int16(BEV_EVENT_EOF)
            } else {
                let e = errno
                if e == EAGAIN || e == EWOULDBLOCK || e == EINTR { return }
                lastErrno = e
                end = Int16(BEV_EVENT_ERROR)
            }
        case .tls(let session):
            readLoop: while room > 0 {
                var vec = iovec()
                let want = min(room, Self.readReserve)  // a record's worth at a time
                guard evbuffer_reserve_space(input, want, &vec, 1) == 1 else { break }
                switch session.read(into: vec.iov_base, count: min(vec.iov_len, want)) {
                case .bytes(let n):
                    vec.iov_len = n
                    evbuffer_commit_space(input, &vec, 1)
                    got += n
                    room -= n
                    // A record OpenSSL has buffered will not make the socket readable: read it now.
                    if !session.hasBufferedInput { break readLoop }
                case .wouldBlock:
                    break readLoop
                case .closed:
                    // Whether it came with close_notify, the session says (`receivedCloseNotify`).
                    end = Int16(BEV_EVENT_EOF)
                    break readLoop
                case .failed(let e, let errors):
                    lastErrno = e
                    lastTLSErrors = errors
                    end = Int16(BEV_EVENT_ERROR)
                    break readLoop
                }
            }
        }
        if got > 0 {
            owner?.streamReadable(self)
            if closed { return }
        }
        if end != 0 {
            readEnds += 1
            readEnabled = false
            updateReadEvent()
            owner?.streamEvent(self, Int16(BEV_EVENT_READING) | end)
            return
        }
        if readHighWatermark > 0 && readEnabled && evbuffer_get_length(input) >= readHighWatermark { suspendReading() }
        // The read filled up with records still in OpenSSL: the socket may never turn readable for them.
        if case .tls(let session) = transport, room == 0, readEventAdded, let readEvent, session.hasBufferedInput {
            event_active(readEvent, EV_READ, 1)
        }
    }

    /// The input holds the high watermark: stop reading until the owner drains it below.
    private func suspendReading() {
        readSuspended = true
        updateReadEvent()
        if inputWatch == nil {
            inputWatch = evbuffer_add_cb(input, streamInputChanged, Unmanaged.passUnretained(self).toOpaque())
        }
    }

    fileprivate func inputChanged() {
        guard readSuspended, evbuffer_get_length(input) < readHighWatermark else { return }
        readSuspended = false
        removeInputWatch()
        updateReadEvent()
    }

    private func removeInputWatch() {
        if let inputWatch {
            evbuffer_remove_cb_entry(input, inputWatch)
            self.inputWatch = nil
        }
    }

    // MARK: writing

    fileprivate func outputGrew() {
        if !flushScheduled && !writeArmed && fd >= 0 && !closed { scheduleFlush() }
    }

    private func scheduleFlush() {
        flushScheduled = true
        flusher.schedule(self)
    }

    /// Writes what the output holds, now. Called by the flusher, and by the write event when the socket has room.
    fileprivate func flush() {
        flushScheduled = false
        guard !closed, fd >= 0 else { return }
        var wrote = false
        var failed = false
        switch transport {
        case .plain:
            while evbuffer_get_length(output) > 0 {
                let n = evbuffer_write(output, fd)
                if n > 0 { wrote = true; continue }
                let e = errno
                if n < 0 && (e == EAGAIN || e == EWOULDBLOCK) { break }
                if n < 0 && e == EINTR { continue }
                lastErrno = e
                failed = true
                break
            }
        case .tls(let session):
            while true {
                let length = evbuffer_get_length(output)
                guard length > 0 else { break }
                // One record per write: up to 16 KiB, made contiguous if it spans chains.
                let chunk = min(length, 16384)
                guard let bytes = evbuffer_pullup(output, chunk) else { failed = true; break }
                switch session.write(bytes, count: chunk) {
                case .bytes(let n):
                    evbuffer_drain(output, n)
                    wrote = true
                    continue
                case .wouldBlock:
                    break
                case .closed:
                    lastErrno = EPIPE
                    lastTLSErrors = []
                    failed = true
                case .failed(let e, let errors):
                    lastErrno = e
                    lastTLSErrors = errors
                    failed = true
                }
                break
            }
        }
        if failed {
            disarmWrite()
            // An upstream that answers early (413, 401) and resets makes the write fail with its answer still
            // unread in the socket: read it first, as the answer, not the reset, is what the client should get.
            if case .tls = transport, readEventAdded {
                let ends = readEnds
                readReady(Int16(EV_READ))
                if closed || readEnds != ends { return }
            }
            owner?.streamEvent(self, Int16(BEV_EVENT_WRITING | BEV_EVENT_ERROR))
            return
        }
        let left = evbuffer_get_length(output)
        if left > 0 { armWrite() } else { disarmWrite() }
        if wrote && left <= writeLowWatermark { owner?.streamWritable(self) }
    }

    private func armWrite() {
        guard !writeArmed, fd >= 0, let readEvent else { return }
        if writeEvent == nil {
            // Made the first time the kernel would block: most connections never need it.
            writeEvent = event_new(event_get_base(readEvent), fd, Int16(EV_WRITE | EV_PERSIST), streamWriteCallback,
                                   Unmanaged.passUnretained(self).toOpaque())
        }
        guard let writeEvent else { return }
        writeArmed = true
        event_add(writeEvent, nil)
    }

    private func disarmWrite() {
        guard writeArmed, let writeEvent else { return }
        writeArmed = false
        event_del(writeEvent)
    }
}

/// Writes the output of every stream that queued some during this loop iteration, after the callbacks that
/// queued it (one event per worker, made active when the first stream asks).
final class StreamFlusher {
    // `@exclusivity(unchecked)`: only the worker's thread touches it, never during another access to it; the
    // dynamic exclusivity check Swift makes on a class's stored property costs about 80 instructions per access.
    @exclusivity(unchecked) private var due: [SocketStream] = []
    private var event: OpaquePointer?

    init(base: OpaquePointer) {
        due.reserveCapacity(64)
        event = event_new(base, -1, 0, streamFlusherCallback, Unmanaged.passUnretained(self).toOpaque())
    }

    /// Frees the event, before the loop's base goes.
    func free() {
        if let event { event_free(event) }
        event = nil
        due.removeAll()
    }

    fileprivate func schedule(_ stream: SocketStream) {
        guard let event else { return }
        if due.isEmpty { event_active(event, EV_WRITE, 1) }
        due.append(stream)
    }

    fileprivate func run() {
        var i = 0
        while i < due.count {
            let stream = due[i]
            i += 1
            if stream.flushScheduled { stream.flush() }
        }
        due.removeAll(keepingCapacity: true)
    }
}

private func streamReadCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    guard let ctx else { return }
    let stream = Unmanaged<SocketStream>.fromOpaque(ctx).takeUnretainedValue()
    withExtendedLifetime(stream) { stream.readReady(what) }
}

private func streamWriteCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    guard let ctx else { return }
    let stream = Unmanaged<SocketStream>.fromOpaque(ctx).takeUnretainedValue()
    withExtendedLifetime(stream) { stream.flush() }
}

private func streamFlusherCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    guard let ctx else { return }
    Unmanaged<StreamFlusher>.fromOpaque(ctx).takeUnretainedValue().run()
}

private func streamOutputChanged(_ buffer: OpaquePointer?, _ info: UnsafePointer<evbuffer_cb_info>?,
                                 _ ctx: UnsafeMutableRawPointer?) {
    guard let ctx, let info, info.pointee.n_added > 0 else { return }
    Unmanaged<SocketStream>.fromOpaque(ctx).takeUnretainedValue().outputGrew()
}

private func streamInputChanged(_ buffer: OpaquePointer?, _ info: UnsafePointer<evbuffer_cb_info>?,
                                _ ctx: UnsafeMutableRawPointer?) {
    guard let ctx, let info, info.pointee.n_deleted > 0 else { return }
    Unmanaged<SocketStream>.fromOpaque(ctx).takeUnretainedValue().inputChanged()
}
