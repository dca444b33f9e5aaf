import CNGHTTP2
@testable import HTTP2

/// An nghttp2 server session in memory, paired with an `H2ClientSession` by `Pair`: the bytes each writes are
/// fed to the other. Each request is answered by `respond` once it is complete (or at once, for `answerEarly`).
final class InMemoryServer {
    struct Request {
        var fields: [H2Field] = []
        var body: [UInt8] = []
        var trailers: [H2Field] = []
        var headBlocks = 0
        var method: String { fields.first { $0.name == ":method" }?.value ?? "" }
        var path: String { fields.first { $0.name == ":path" }?.value ?? "" }
    }

    /// What the server does with a request.
    enum Answer {
        case response(status: Int, fields: [H2Field], body: [UInt8], trailers: [H2Field])
        case interimThen(status: Int, [H2Field], body: [UInt8])
        case reset(UInt32)
        case nothing
    }

    var session: OpaquePointer?
    var requests: [Int32: Request] = [:]
    var completed: [Int32: Request] = [:]
    var respond: (Request) -> Answer = { _ in .response(status: 200, fields: [], body: Array("hello".utf8), trailers: []) }
    var bodies: [Int32: (bytes: [UInt8], offset: Int, trailers: [H2Field])] = [:]

    init(settings: [(Int32, UInt32)] = []) {
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks) { _, frame, user in
            let server = Unmanaged<InMemoryServer>.fromOpaque(user!).takeUnretainedValue()
            let id = frame!.pointee.hd.stream_id
            if server.requests[id] == nil { server.requests[id] = Request() }
            server.requests[id]!.headBlocks += 1
            return 0
        }
        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, namelen, value, valuelen, _, user in
            let server = Unmanaged<InMemoryServer>.fromOpaque(user!).takeUnretainedValue()
            let id = frame!.pointee.hd.stream_id
            let field = H2Field(String(decoding: UnsafeBufferPointer(start: name, count: namelen), as: UTF8.self),
                                String(decoding: UnsafeBufferPointer(start: value, count: valuelen), as: UTF8.self))
            if server.requests[id]!.headBlocks > 1 { server.requests[id]!.trailers.append(field) }
            else { server.requests[id]!.fields.append(field) }
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, id, data, len, user in
            let server = Unmanaged<InMemoryServer>.fromOpaque(user!).takeUnretainedValue()
            server.requests[id]?.body.append(contentsOf: UnsafeBufferPointer(start: data, count: len))
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { session, frame, user in
            let server = Unmanaged<InMemoryServer>.fromOpaque(user!).takeUnretainedValue()
            let hd = frame!.pointee.hd
            guard hd.type == UInt8(NGHTTP2_HEADERS.rawValue) || hd.type == UInt8(NGHTTP2_DATA.rawValue) else { return 0 }
            guard hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0, let request = server.requests[hd.stream_id] else { return 0 }
            server.completed[hd.stream_id] = request
            server.answer(hd.stream_id, server.respond(request))
            return 0
        }
        var made: OpaquePointer?
        nghttp2_session_server_new(&made, callbacks, Unmanaged.passUnretained(self).toOpaque())
        nghttp2_session_callbacks_del(callbacks)
        session = made
        var entries = settings.map { nghttp2_settings_entry(settings_id: $0.0, value: $0.1) }
        nghttp2_submit_settings(made, 0, &entries, entries.count)
    }

    deinit { nghttp2_session_del(session) }

    func answer(_ id: Int32, _ answer: Answer) {
        switch answer {
        case .nothing: return
        case .reset(let code): nghttp2_submit_rst_stream(session, 0, id, code)
        case .interimThen(let status, let fields, let body):
            submitHeaders(id, [H2Field(":status", "100")], endStream: false)
            respond(id, status: status, fields: fields, body: body, trailers: [])
        case .response(let status, let fields, let body, let trailers):
            respond(id, status: status, fields: fields, body: body, trailers: trailers)
        }
    }

    func submitHeaders(_ id: Int32, _ fields: [H2Field], endStream: Bool) {
        withNV(fields) { nva in
            _ = nghttp2_submit_headers(session, endStream ? UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) : 0, id, nil, nva.baseAddress, nva.count, nil)
        }
    }

    func respond(_ id: Int32, status: Int, fields: [H2Field], body: [UInt8]?, trailers: [H2Field]) {
        let all = [H2Field(":status", String(status))] + fields
        guard let body else {
            withNV(all) { nva in _ = nghttp2_submit_response(session, id, nva.baseAddress, nva.count, nil) }
            return
        }
        bodies[id] = (body, 0, trailers)
        withNV(all) { nva in
            var provider = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil)) { session, id, buf, length, flags, _, user in
                let server = Unmanaged<InMemoryServer>.fromOpaque(user!).takeUnretainedValue()
                var entry = server.bodies[id]!
                let n = min(length, entry.bytes.count - entry.offset)
                for i in 0..<n { buf![i] = entry.bytes[entry.offset + i] }
                entry.offset += n
                server.bodies[id] = entry
                if entry.offset == entry.bytes.count {
                    flags!.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue)
                    if !entry.trailers.isEmpty {
                        flags!.pointee |= UInt32(NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue)
                        server.withNV(entry.trailers) { nva in _ = nghttp2_submit_trailer(session, id, nva.baseAddress, nva.count) }
                    }
                }
                return n
            }
            _ = nghttp2_submit_response(session, id, nva.baseAddress, nva.count, &provider)
        }
    }

    func withNV(_ fields: [H2Field], _ body: (UnsafeBufferPointer<nghttp2_nv>) -> Void) {
        var bytes: [UInt8] = []
        var spans: [(Int, Int, Int, Int)] = []
        for f in fields {
            let a = bytes.count
            bytes += Array(f.name.utf8)
            let b = bytes.count
            bytes += Array(f.value.utf8)
            spans.append((a, b - a, b, bytes.count - b))
        }
        bytes.append(0)
        bytes.withUnsafeMutableBufferPointer { buffer in
            let nva = spans.map { nghttp2_nv(name: buffer.baseAddress! + $0.0, value: buffer.baseAddress! + $0.2, namelen: $0.1, valuelen: $0.3, flags: 0) }
            nva.withUnsafeBufferPointer { body($0) }
        }
    }

    func receive(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBufferPointer { nghttp2_session_mem_recv(session, $0.baseAddress, $0.count) }
    }

    func output() -> [UInt8] {
        var out: [UInt8] = []
        while true {
            var data: UnsafePointer<UInt8>?
            let n = nghttp2_session_mem_send(session, &data)
            if n <= 0 { break }
            out += UnsafeBufferPointer(start: data, count: n)
        }
        return out
    }
}

/// Records a client session's events as values a test can compare.
final class EventLog: H2ClientSessionDelegate {
    enum Entry: Equatable {
        case informational(Int32, [H2Field])
        case response(Int32, [H2Field], Bool)
        case data(Int32, [UInt8])
        case trailers(Int32, [H2Field])
        case ended(Int32)
        case closed(Int32, UInt32)
        case goAway(Int32, UInt32)
        case settings(UInt32)
    }
    var entries: [Entry] = []
    /// Data bytes per stream (DATA arrives in pieces).
    var bodies: [Int32: [UInt8]] = [:]
    var onData: ((Int32, Int) -> Void)?

    func h2Event(_ event: H2Event) {
        switch event {
        case .informational(let s, let f): entries.append(.informational(s, f.fields))
        case .response(let s, let f, let e): entries.append(.response(s, f.fields, e))
        case .data(let s, let b):
            bodies[s, default: []] += Array(b)
            onData?(s, b.count)
        case .trailers(let s, let f): entries.append(.trailers(s, f))
        case .responseEnded(let s): entries.append(.ended(s))
        case .closed(let s, let c): entries.append(.closed(s, c))
        case .goAway(let l, let c): entries.append(.goAway(l, c))
        case .settings(let m): entries.append(.settings(m))
        }
    }
}

/// A client session and a server session exchanging bytes until neither has more to say.
struct Pair {
    let client: H2ClientSession
    let server: InMemoryServer
    let log = EventLog()

    init(limits: H2SessionLimits = H2SessionLimits(), serverSettings: [(Int32, UInt32)] = []) throws {
        client = try H2ClientSession(limits: limits)
        server = InMemoryServer(settings: serverSettings)
        client.delegate = log
    }

    /// Moves bytes both ways until quiet; the client's failure, if any, is thrown.
    func run(rounds: Int = 50) throws {
        for _ in 0..<rounds {
            var toServer: [UInt8] = []
            try client.send { toServer += Array($0) }
            if !toServer.isEmpty { _ = server.receive(toServer) }
            let toClient = server.output()
            if !toClient.isEmpty { try toClient.withUnsafeBytes { try client.receive($0) } }
            if toServer.isEmpty && toClient.isEmpty { return }
        }
    }

    /// Feeds raw frame bytes to the client, as a misbehaving server would send them.
    func inject(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try client.receive($0) }
    }
}
