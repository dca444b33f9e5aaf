import CNGHTTP2
import HTTP1

/// What a client session reports about its streams and its connection, in the order frames arrived.
/// `data`'s bytes are valid only during the call.
public enum H2Event {
    /// A 1xx head (100 Continue, 103 Early Hints...): passed on, more heads follow. The list is the session's,
    /// refilled for the next head: valid during the call.
    case informational(stream: Int32, fields: H2HeaderList)
    /// The final response head; `endStream` when it has no body. The list is valid during the call.
    case response(stream: Int32, fields: H2HeaderList, endStream: Bool)
    case data(stream: Int32, bytes: UnsafeRawBufferPointer)
    /// The trailer section, which ends the response.
    case trailers(stream: Int32, fields: [H2Field])
    /// The server ended its side of the stream (END_STREAM): the response is complete.
    case responseEnded(stream: Int32)
    /// The stream is gone: `errorCode` 0 after a complete exchange, else the RST_STREAM code (sent or received).
    case closed(stream: Int32, errorCode: UInt32)
    /// The server is closing the connection: streams above `lastStreamID` were not processed.
    case goAway(lastStreamID: Int32, errorCode: UInt32)
    /// The server's SETTINGS arrived (or changed): how many streams it takes at once.
    case settings(maxConcurrentStreams: UInt32)
}

/// Receives a session's events. It must not release the session while an event is being delivered.
public protocol H2ClientSessionDelegate: AnyObject {
    func h2Event(_ event: H2Event)
}

/// The limits a session holds a server to, and the windows it offers.
public struct H2SessionLimits: Sendable, Equatable {
    /// The per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE): the most response bytes one stream can
    /// have in the proxy before its client reads them.
    public var streamWindow: Int32 = 256 * 1024
    /// The connection's receive window; the proxy gives it back as soon as bytes arrive, so that one stream
    /// whose client is slow never holds back the others.
    public var connectionWindow: Int32 = 4 * 1024 * 1024
    /// The largest header list (names, values, 32 bytes each, as RFC 9113 §6.5.2 counts) a server may send;
    /// more closes the connection.
    public var maxHeaderListBytes: Int = 64 * 1024
    /// CONTINUATION frames in one header block; more closes the connection.
    public var maxContinuations: Int = 8
    /// SETTINGS entries in one frame.
    public var maxSettingsEntries: Int = 32
    /// Queued frames owed to the server (PING and SETTINGS acknowledgements) before a flood closes the connection.
    public var maxOutboundAcks: Int = 1000

    public init() {}
}

/// Why a session stopped: the connection must close.
public struct H2SessionFailure: Error, Equatable, Sendable, CustomStringConvertible {
    public var code: Int32
    public var message: String
    public var description: String { message }
}

/// The client side of one HTTP/2 connection: an owning wrapper around an `nghttp2_session` that reads and
/// writes memory (`receive`, `send`), never a socket, so it is driven the same way by the event loop and by a
/// test that pairs it with an nghttp2 server session. Push is refused (SETTINGS_ENABLE_PUSH = 0). Response
/// bytes are given back to the stream's window only when its client took them (`consumed`), to the
/// connection's window as soon as they arrive.
public final class H2ClientSession {
    private var session: OpaquePointer?
    /// nghttp2's memory for this session (freed after it: `deinit` deletes the session first).
    private let blocks = H2BlockCache()
    public unowned(unsafe) var delegate: H2ClientSessionDelegate?
    public let limits: H2SessionLimits

    /// A request body waiting to go out as DATA frames.
    final class RequestBody {
        var bytes: [UInt8] = []
        var offset = 0
        var ended = false
        var trailers: [H2Field] = []
        var deferred = false
        var pending: Int { bytes.count - offset }
    }

    struct StreamState {
        var method: String
        var body: RequestBody?
        var finalHeadSeen = false
    }

    // `@exclusivity(unchecked)` on the state every frame reaches: only the thread that drives the session touches
    // it, never during another access to it (callbacks run inside `receive` and `send`, one at a time); the dynamic
    // check cost about 80 instructions per access.
    @exclusivity(unchecked) private var streams: [Int32: StreamState] = [:]
    /// The header block being received (HEADERS and its CONTINUATIONs come one block at a time, never
    /// interleaved with another stream's, RFC 9113 §4.3), reused for every block: the stream it belongs to (0 for
    /// one the session does not know), its fields as bytes, and its size as SETTINGS_MAX_HEADER_LIST_SIZE counts.
    @exclusivity(unchecked) private var incomingStream: Int32 = 0
    @exclusivity(unchecked) private var incoming = H2HeaderList()
    @exclusivity(unchecked) private var incomingBytes = 0
    /// What the reused buffers may keep between heads; a larger head's buffers are dropped after it (as the
    /// exchange store does with an exchange's head buffers).
    static let keptBufferBytes = 32 * 1024
    /// The name-value pairs of the request being submitted, reused.
    @exclusivity(unchecked) private var nameValues: [nghttp2_nv] = []
    /// The error code of the GOAWAY this side sent, when nghttp2 ended the session for a fault of the server
    /// (a push, a header block it could not decode, a flood): nil while none went out.
    public private(set) var sentGoAwayCode: UInt32?
    /// Set by a callback that found the server in breach of a limit; the next `receive` fails with it.
    private var breach: String?

    public init(limits: H2SessionLimits = H2SessionLimits()) throws {
        self.limits = limits
        var callbacks: OpaquePointer?
        guard nghttp2_session_callbacks_new(&callbacks) == 0, let callbacks else {
            throw H2SessionFailure(code: -1, message: "nghttp2_session_callbacks_new failed")
        }
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, h2OnBeginHeaders)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, h2OnHeader)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, h2OnFrameRecv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, h2OnDataChunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, h2OnStreamClose)
        nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, h2OnFrameSend)

        var option: OpaquePointer?
        guard nghttp2_option_new(&option) == 0, let option else {
            throw H2SessionFailure(code: -1, message: "nghttp2_option_new failed")
        }
        defer { nghttp2_option_del(option) }
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_max_continuations(option, limits.maxContinuations)
        nghttp2_option_set_max_settings(option, limits.maxSettingsEntries)
        nghttp2_option_set_max_outbound_ack(option, limits.maxOutboundAcks)
        // A request head may be as large as the proxy accepts (max_header_bytes, up to 1 MiB): nghttp2's 64 KiB
        // default would refuse larger ones.
        nghttp2_option_set_max_send_header_block_length(option, 2 << 20)

        var made: OpaquePointer?
        var mem = blocks.mem
        let rc = nghttp2_session_client_new3(&made, callbacks, nil, option, &mem)
        guard rc == 0, let made else { throw H2SessionFailure(code: rc, message: Self.text(rc)) }
        session = made
        nghttp2_session_set_user_data(made, Unmanaged.passUnretained(self).toOpaque())

        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(limits.streamWindow)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(limits.maxHeaderListBytes)),
        ]
        let submitted = nghttp2_submit_settings(made, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
        guard submitted == 0 else { throw H2SessionFailure(code: submitted, message: Self.text(submitted)) }
        let window = nghttp2_session_set_local_window_size(made, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, limits.connectionWindow)
        guard window == 0 else { throw H2SessionFailure(code: window, message: Self.text(window)) }
    }

    deinit {
        if let session { nghttp2_session_del(session) }
    }

    static func text(_ code: Int32) -> String { String(cString: nghttp2_strerror(code)) }

    /// The name of an HTTP/2 error code (RFC 9113 §7), e.g. `REFUSED_STREAM`, for Proxy-Status and logs.
    public static func errorName(_ code: UInt32) -> String {
        switch code {
        case 0x0: return "NO_ERROR"
        case 0x1: return "PROTOCOL_ERROR"
        case 0x2: return "INTERNAL_ERROR"
        case 0x3: return "FLOW_CONTROL_ERROR"
        case 0x4: return "SETTINGS_TIMEOUT"
        case 0x5: return "STREAM_CLOSED"
        case 0x6: return "FRAME_SIZE_ERROR"
        case 0x7: return "REFUSED_STREAM"
        case 0x8: return "CANCEL"
        case 0x9: return "COMPRESSION_ERROR"
        case 0xa: return "CONNECT_ERROR"
        case 0xb: return "ENHANCE_YOUR_CALM"
        case 0xc: return "INADEQUATE_SECURITY"
        case 0xd: return "HTTP_1_1_REQUIRED"
        default: return "0x" + String(code, radix: 16)
        }
    }

    // MARK: Bytes in and out

    /// Feeds bytes read from the connection. Throws when the connection must close (a protocol error of the
    /// server, a breached limit); the events are delivered before it returns.
    public func receive(_ bytes: UnsafeRawBufferPointer) throws {
        guard let session else { throw H2SessionFailure(code: -1, message: "the HTTP/2 session is closed") }
        try withExtendedLifetime(self) {
            let n = nghttp2_session_mem_recv(session, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count)
            if let breach { throw H2SessionFailure(code: Int32(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue), message: breach) }
            if n < 0 { throw H2SessionFailure(code: Int32(n), message: Self.text(Int32(n))) }
        }
    }

    /// Hands every frame ready to go out to `write`, in order. Throws when the connection must close.
    public func send(_ write: (UnsafeRawBufferPointer) -> Void) throws {
        guard let session else { return }
        try withExtendedLifetime(self) {
            while true {
                var data: UnsafePointer<UInt8>?
                let n = nghttp2_session_mem_send(session, &data)
                if n < 0 { throw H2SessionFailure(code: Int32(n), message: Self.text(Int32(n))) }
                if n == 0 { return }
                write(UnsafeRawBufferPointer(start: data, count: n))
            }
        }
    }

    /// Whether the session has anything to say or hear; false once both sides are done (after GOAWAY).
    public var isAlive: Bool {
        guard let session else { return false }
        return nghttp2_session_want_read(session) != 0 || nghttp2_session_want_write(session) != 0
    }

    public var wantsWrite: Bool { session.map { nghttp2_session_want_write($0) != 0 } ?? false }

    /// Streams open now, opened by this side.
    public var openStreams: Int { streams.count }

    /// How many streams the server takes at once (SETTINGS_MAX_CONCURRENT_STREAMS; unlimited until it says).
    public var serverMaxConcurrentStreams: UInt32 {
        guard let session else { return 0 }
        return nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
    }

    /// The largest header list the server takes (SETTINGS_MAX_HEADER_LIST_SIZE; unlimited until it says).
    public var serverMaxHeaderListSize: UInt32 {
        guard let session else { return 0 }
        return nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE)
    }

    /// The size of a header list as SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113 §6.5.2); `H2HeaderList.listSize`
    /// for a list of bytes.
    public static func headerListSize(_ fields: [H2Field]) -> Int {
        fields.reduce(0) { $0 + $1.name.utf8.count + $1.value.unicodeScalars.count + 32 }
    }

    // MARK: Streams

    /// Opens a stream with the request's header list. `hasBody`: DATA will follow (`sendBody`, `endBody`);
    /// otherwise the HEADERS frame ends the request. Returns the stream id.
    public func startRequest(_ fields: [H2Field], method: String, hasBody: Bool) throws -> Int32 {
        try startRequest(H2HeaderList(fields), method: method, hasBody: hasBody)
    }

    /// The same from a header list of bytes (nghttp2 copies them: the list may be refilled once this returns).
    public func startRequest(_ fields: H2HeaderList, method: String, hasBody: Bool) throws -> Int32 {
        guard let session else { throw H2SessionFailure(code: -1, message: "the HTTP/2 session is closed") }
        let body = hasBody ? RequestBody() : nil
        let id: Int32 = withNameValues(fields) { nva in
            if hasBody {
                var provider = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: h2ReadRequestBody)
                return nghttp2_submit_request(session, nil, nva.baseAddress, nva.count, &provider, nil)
            }
            return nghttp2_submit_request(session, nil, nva.baseAddress, nva.count, nil, nil)
        }
        guard id > 0 else { throw H2SessionFailure(code: id, message: Self.text(id)) }
        streams[id] = StreamState(method: method, body: body)
        return id
    }

    /// Lays `fields` out as nghttp2 name-value pairs (values as Latin-1 bytes), valid during `body` (nghttp2
    /// copies them when a frame is submitted).
    private func withNameValues<R>(_ fields: [H2Field], _ body: (UnsafeBufferPointer<nghttp2_nv>) -> R) -> R {
        withNameValues(H2HeaderList(fields), body)
    }

    /// The name-value pairs of a list, pointing into its bytes (the session's pairs array, reused), valid during
    /// `body`. nghttp2 copies names and values on submit and never writes through the pointers.
    private func withNameValues<R>(_ list: H2HeaderList, _ body: (UnsafeBufferPointer<nghttp2_nv>) -> R) -> R {
        nameValues.removeAll(keepingCapacity: true)
        return list.bytes.withUnsafeBufferPointer { bytes in
            var spare: UInt8 = 0
            return withUnsafeMutablePointer(to: &spare) { empty in
                let base = bytes.baseAddress.map { UnsafeMutablePointer(mutating: $0) } ?? empty
                for s in list.spans {
                    nameValues.append(nghttp2_nv(name: base + Int(s.nameStart), value: base + Int(s.valueStart),
                                                 namelen: Int(s.valueStart - s.nameStart), valuelen: Int(s.valueEnd - s.valueStart),
                                                 flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
                }
                defer {
                    if nameValues.capacity * MemoryLayout<nghttp2_nv>.stride > Self.keptBufferBytes { nameValues = [] }
                }
                return nameValues.withUnsafeBufferPointer { body($0) }
            }
        }
    }

    /// Request body bytes queued for a stream and not yet framed: the producer stops reading its client above
    /// a bound (backpressure), and goes on once this falls.
    public func pendingBody(_ stream: Int32) -> Int { streams[stream]?.body?.pending ?? 0 }

    /// Queues request body bytes for `stream`.
    public func sendBody(_ stream: Int32, _ bytes: UnsafeRawBufferPointer) {
        guard let session, let body = streams[stream]?.body, !body.ended else { return }
        if body.offset > 0 && body.offset == body.bytes.count {
            body.bytes.removeAll(keepingCapacity: true)
            body.offset = 0
        }
        body.bytes.append(contentsOf: bytes)
        if body.deferred {
            body.deferred = false
            _ = nghttp2_session_resume_data(session, stream)
        }
    }

    /// Ends the request body, with an optional trailer section.
    public func endBody(_ stream: Int32, trailers: [H2Field] = []) {
        guard let session, let body = streams[stream]?.body, !body.ended else { return }
        body.ended = true
        body.trailers = trailers
        if body.deferred {
            body.deferred = false
            _ = nghttp2_session_resume_data(session, stream)
        }
    }

    /// The client took `count` response bytes of `stream`: the server may send that many more on it.
    public func consumed(_ stream: Int32, _ count: Int) {
        guard let session, count > 0, streams[stream] != nil else { return }
        _ = nghttp2_session_consume_stream(session, stream, count)
    }

    /// Cancels a stream (RST_STREAM), e.g. when its client went away.
    public func reset(_ stream: Int32, errorCode: UInt32 = 0x8) {
        guard let session, streams[stream] != nil else { return }
        _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, errorCode)
    }

    /// Sends a PING (liveness of an idle connection).
    public func ping() {
        guard let session else { return }
        _ = nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil)
    }

    /// Says GOAWAY to the server: no new streams; those open finish.
    public func shutdown(errorCode: UInt32 = 0) {
        guard let session else { return }
        _ = nghttp2_session_terminate_session(session, errorCode)
    }

    // MARK: Callbacks (from the C trampolines below, only inside `receive` and `send`)

    fileprivate func beginHeaders(_ stream: Int32) {
        incoming.removeAll()
        incomingBytes = 0
        incomingStream = streams[stream] != nil ? stream : 0
    }

    fileprivate func header(_ stream: Int32, name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) -> Bool {
        guard stream == incomingStream, stream != 0 else { return true }
        incomingBytes += name.count + value.count + 32
        if incomingBytes > limits.maxHeaderListBytes {
            breach = "the upstream sent a header list over \(limits.maxHeaderListBytes) bytes"
            return false
        }
        incoming.append(name: name, value: value)
        return true
    }

    /// Whether the block's `:status` is 1xx (an interim head).
    private var incomingIsInterim: Bool {
        var interim = false
        incoming.forEach { name, value in
            guard H2Bytes.equals(name, ":status") else { return true }
            interim = value.first == 0x31
            return false
        }
        return interim
    }

    fileprivate func frameReceived(_ frame: UnsafePointer<nghttp2_frame>) {
        let hd = frame.pointee.hd
        let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        switch Int(hd.type) {
        case Int(NGHTTP2_HEADERS.rawValue):
            guard hd.stream_id == incomingStream, var state = streams[hd.stream_id] else { return }
            if state.finalHeadSeen {
                delegate?.h2Event(.trailers(stream: hd.stream_id, fields: incoming.fields))
            } else if incomingIsInterim {
                delegate?.h2Event(.informational(stream: hd.stream_id, fields: incoming))
            } else {
                state.finalHeadSeen = true
                streams[hd.stream_id] = state
                delegate?.h2Event(.response(stream: hd.stream_id, fields: incoming, endStream: endStream))
            }
            incoming.removeAll(keepingAtMost: Self.keptBufferBytes)
            if endStream { delegate?.h2Event(.responseEnded(stream: hd.stream_id)) }
        case Int(NGHTTP2_DATA.rawValue):
            if endStream { delegate?.h2Event(.responseEnded(stream: hd.stream_id)) }
        case Int(NGHTTP2_GOAWAY.rawValue):
            delegate?.h2Event(.goAway(lastStreamID: frame.pointee.goaway.last_stream_id, errorCode: frame.pointee.goaway.error_code))
        case Int(NGHTTP2_SETTINGS.rawValue):
            if hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) == 0 {
                delegate?.h2Event(.settings(maxConcurrentStreams: serverMaxConcurrentStreams))
            }
        default:
            break
        }
    }

    fileprivate func frameSent(_ frame: UnsafePointer<nghttp2_frame>) {
        if Int(frame.pointee.hd.type) == Int(NGHTTP2_GOAWAY.rawValue) { sentGoAwayCode = frame.pointee.goaway.error_code }
    }

    fileprivate func dataChunk(_ stream: Int32, _ bytes: UnsafeRawBufferPointer) {
        // The connection's window comes back at once; the stream's when its client has the bytes (`consumed`).
        if let session { _ = nghttp2_session_consume_connection(session, bytes.count) }
        guard streams[stream] != nil else { return }
        delegate?.h2Event(.data(stream: stream, bytes: bytes))
    }

    fileprivate func streamClosed(_ stream: Int32, _ errorCode: UInt32) {
        guard streams.removeValue(forKey: stream) != nil else { return }
        delegate?.h2Event(.closed(stream: stream, errorCode: errorCode))
    }

    fileprivate func readBody(_ stream: Int32, into buffer: UnsafeMutablePointer<UInt8>, length: Int,
                              flags: UnsafeMutablePointer<UInt32>) -> Int {
        guard let session, let body = streams[stream]?.body else {
            return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
        }
        let n = min(length, body.pending)
        if n > 0 {
            body.bytes.withUnsafeBytes { src in
                UnsafeMutableRawPointer(buffer).copyMemory(from: src.baseAddress! + body.offset, byteCount: n)
            }
            body.offset += n
        }
        if body.pending == 0 {
            if body.ended {
                flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue)
                if !body.trailers.isEmpty {
                    flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue)
                    submitTrailers(session, stream, body.trailers)
                }
                body.bytes = []
                body.offset = 0
            } else if n == 0 {
                body.deferred = true
                return Int(NGHTTP2_ERR_DEFERRED.rawValue)
            }
        }
        return n
    }

    private func submitTrailers(_ session: OpaquePointer, _ stream: Int32, _ fields: [H2Field]) {
        _ = withNameValues(fields) { nva in nghttp2_submit_trailer(session, stream, nva.baseAddress, nva.count) }
    }
}

// MARK: C trampolines: the session is the user_data, unretained (it outlives every call into nghttp2 it makes).

private func owner(_ userData: UnsafeMutableRawPointer?) -> H2ClientSession {
    Unmanaged<H2ClientSession>.fromOpaque(userData!).takeUnretainedValue()
}

private let h2OnBeginHeaders: nghttp2_on_begin_headers_callback = { _, frame, userData in
    owner(userData).beginHeaders(frame!.pointee.hd.stream_id)
    return 0
}

private let h2OnHeader: nghttp2_on_header_callback = { _, frame, name, namelen, value, valuelen, _, userData in
    let ok = owner(userData).header(frame!.pointee.hd.stream_id,
                                    name: UnsafeBufferPointer(start: name, count: namelen),
                                    value: UnsafeBufferPointer(start: value, count: valuelen))
    return ok ? 0 : Int32(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue)
}

private let h2OnFrameRecv: nghttp2_on_frame_recv_callback = { _, frame, userData in
    owner(userData).frameReceived(frame!)
    return 0
}

private let h2OnFrameSend: nghttp2_on_frame_send_callback = { _, frame, userData in
    owner(userData).frameSent(frame!)
    return 0
}

private let h2OnDataChunk: nghttp2_on_data_chunk_recv_callback = { _, _, streamID, data, len, userData in
    owner(userData).dataChunk(streamID, UnsafeRawBufferPointer(start: data, count: len))
    return 0
}

private let h2OnStreamClose: nghttp2_on_stream_close_callback = { _, streamID, errorCode, userData in
    owner(userData).streamClosed(streamID, errorCode)
    return 0
}

private let h2ReadRequestBody: nghttp2_data_source_read_callback = { _, streamID, buf, length, flags, _, userData in
    owner(userData).readBody(streamID, into: buf!, length: length, flags: flags!)
}
