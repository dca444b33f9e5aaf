import Testing
import CNGHTTP2
@testable import HTTP2

private let get = [H2Field(":method", "GET"), H2Field(":scheme", "https"), H2Field(":authority", "h"), H2Field(":path", "/")]
private func post(_ path: String = "/up") -> [H2Field] {
    [H2Field(":method", "POST"), H2Field(":scheme", "https"), H2Field(":authority", "h"), H2Field(":path", path)]
}

/// One raw frame (RFC 9113 §4.1), for what a well-behaved nghttp2 server would never send.
private func frame(type: UInt8, flags: UInt8 = 0, stream: Int32, _ payload: [UInt8] = []) -> [UInt8] {
    let n = payload.count
    return [UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff), type, flags,
            UInt8(stream >> 24 & 0x7f), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff)] + payload
}

/// The client session paired in memory with an nghttp2 server session: streams, bodies both ways, interim
/// responses, trailers, resets, flow control, and a server breaking the rules.
@Suite struct H2ClientSessionTests {
    @Test func getWithResponseBody() throws {
        let pair = try Pair()
        let id = try pair.client.startRequest(get, method: "GET", hasBody: false)
        try pair.run()
        #expect(pair.server.completed[id]?.path == "/")
        #expect(pair.log.entries.contains(.response(id, [H2Field(":status", "200")], false)))
        #expect(pair.log.bodies[id] == Array("hello".utf8))
        #expect(pair.log.entries.suffix(2) == [.ended(id), .closed(id, 0)])
        #expect(pair.client.openStreams == 0)
    }

    @Test func requestBodyInPiecesWithTrailers() throws {
        let pair = try Pair()
        pair.server.respond = { request in .response(status: 200, fields: [], body: request.body, trailers: []) }
        let id = try pair.client.startRequest(post(), method: "POST", hasBody: true)
        try pair.run()
        #expect(pair.server.completed[id] == nil)  // waits for the body, nothing ended the stream
        let piece = [UInt8](repeating: 0x61, count: 40_000)
        for _ in 0..<3 {
            piece.withUnsafeBytes { pair.client.sendBody(id, $0) }
            try pair.run()
        }
        pair.client.endBody(id, trailers: [H2Field("x-checksum", "abc")])
        try pair.run()
        #expect(pair.server.completed[id]?.body.count == 120_000)
        #expect(pair.server.completed[id]?.trailers == [H2Field("x-checksum", "abc")])
        // The echo exceeds the stream window: the rest comes as the client consumes.
        pair.log.onData = { stream, n in pair.client.consumed(stream, n) }
        try pair.run()
        #expect(pair.log.bodies[id]?.count == 120_000)
    }

    @Test func interimResponseBeforeTheFinalOne() throws {
        let pair = try Pair()
        pair.server.respond = { _ in .interimThen(status: 201, [], body: Array("made".utf8)) }
        let id = try pair.client.startRequest(post(), method: "POST", hasBody: true)
        pair.client.endBody(id)
        try pair.run()
        #expect(pair.log.entries.first(where: { if case .informational = $0 { return true } else { return false } })
                == .informational(id, [H2Field(":status", "100")]))
        #expect(pair.log.entries.contains(.response(id, [H2Field(":status", "201")], false)))
    }

    @Test func responseTrailersAreReported() throws {
        let pair = try Pair()
        pair.server.respond = { _ in .response(status: 200, fields: [], body: Array("x".utf8), trailers: [H2Field("grpc-status", "0")]) }
        let id = try pair.client.startRequest(get, method: "GET", hasBody: false)
        try pair.run()
        #expect(pair.log.entries.contains(.trailers(id, [H2Field("grpc-status", "0")])))
        #expect(pair.log.entries.suffix(2) == [.ended(id), .closed(id, 0)])
    }

    /// RFC 9113 §8.1: a trailer section has no pseudo-fields. nghttp2's messaging checks refuse one: the stream is
    /// reset (PROTOCOL_ERROR) and the trailers never reported, so the client sees a truncation, not a `:status` line.
    @Test func aPseudoFieldInResponseTrailersResetsTheStream() throws {
        let pair = try Pair()
        pair.server.respond = { _ in .response(status: 200, fields: [], body: Array("x".utf8), trailers: [H2Field(":status", "200"), H2Field("x-a", "1")]) }
        let id = try pair.client.startRequest(get, method: "GET", hasBody: false)
        try pair.run()
        #expect(!pair.log.entries.contains { if case .trailers = $0 { return true } else { return false } })
        #expect(!pair.log.entries.contains(.ended(id)))
        #expect(pair.log.entries.last == .closed(id, 0x1))
    }

    /// A connection-specific field (or a CR in a value) in response trailers is refused the same way.
    @Test(arguments: [H2Field("connection", "close"), H2Field("transfer-encoding", "chunked"), H2Field("x-a", "1\r\nx-b: 2")])
    func aMalformedResponseTrailerResetsTheStream(_ field: H2Field) throws {
        let pair = try Pair()
        pair.server.respond = { _ in .response(status: 200, fields: [], body: Array("x".utf8), trailers: [field]) }
        let id = try pair.client.startRequest(get, method: "GET", hasBody: false)
        try pair.run()
        #expect(!pair.log.entries.contains { if case .trailers = $0 { return true } else { return false } })
        #expect(pair.log.entries.last == .closed(id, 0x1))
    }

    @Test func resetBeforeTheHeadClosesTheStreamWithItsCode() throws {
        let pair = try Pair()
        pair.server.respond = { _ in .reset(0x2) }
        let id = try pair.client.startRequest(get, method: "GET", hasBody: false)
        try pair.run()
        #expect(pair.log.entries.last == .closed(id, 0x2))
        #expect(!pair.log.entries.contains { if case .response = $0 { return true } else { return false } })
        #expect(H2ClientSession.errorName(0x2) == "INTERNAL_ERROR")
    }

    @Test func shortBodyAgainstContentLengthIsAStreamError() throws {
        let pair = try Pair()
        pair.server.respond = { _ in .response(status: 200, fields: [H2Field("content-length", "10")], body: Array("12345".utf8), trailers: []) }
        let id = try pair.client.startRequest(get, method: "GET", hasBody: false)
        try pair.run()
        #expect(!pair.log.entries.contains(.ended(id)))
        #expect(pair.log.entries.last == .closed(id, 0x1))  // PROTOCOL_ERROR
    }

    @Test func aSlowStreamHoldsBackOnlyItself() throws {
        var limits = H2SessionLimits()
        limits.streamWindow = 16 * 1024
        let pair = try Pair(limits: limits)
        let big = [UInt8](repeating: 0x62, count: 200_000)
        pair.server.respond = { _ in .response(status: 200, fields: [], body: big, trailers: []) }
        let slow = try pair.client.startRequest(get, method: "GET", hasBody: false)
        let fast = try pair.client.startRequest(get, method: "GET", hasBody: false)
        pair.log.onData = { stream, n in if stream == fast { pair.client.consumed(stream, n) } }
        try pair.run(rounds: 500)
        #expect(pair.log.bodies[fast]?.count == 200_000)
        #expect(pair.log.entries.contains(.ended(fast)))
        // The slow stream holds at most its window, and gets the rest once its client reads.
        #expect((pair.log.bodies[slow]?.count ?? 0) <= 16 * 1024)
        pair.client.consumed(slow, pair.log.bodies[slow]?.count ?? 0)
        pair.log.onData = { stream, n in pair.client.consumed(stream, n) }
        try pair.run(rounds: 500)
        #expect(pair.log.bodies[slow]?.count == 200_000)
    }

    @Test func serverSettingsLimitConcurrentStreams() throws {
        let pair = try Pair(serverSettings: [(Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), 3)])
        try pair.run()
        #expect(pair.client.serverMaxConcurrentStreams == 3)
        #expect(pair.log.entries.contains(.settings(3)))
    }

    @Test func goAwayIsReportedWithTheLastProcessedStream() throws {
        let pair = try Pair()
        pair.server.respond = { _ in .nothing }
        let first = try pair.client.startRequest(get, method: "GET", hasBody: false)
        let second = try pair.client.startRequest(get, method: "GET", hasBody: false)
        try pair.run()
        nghttp2_submit_goaway(pair.server.session, 0, first, 0, nil, 0)
        try pair.run()
        #expect(pair.log.entries.contains(.goAway(first, 0)))
        // nghttp2 closes the streams the server did not process with REFUSED_STREAM.
        #expect(pair.log.entries.contains(.closed(second, 0x7)))
    }

    @Test func pushPromiseIsAConnectionError() throws {
        let pair = try Pair()
        let id = try pair.client.startRequest(get, method: "GET", hasBody: false)
        pair.server.respond = { _ in .nothing }
        try pair.run()
        // PUSH_PROMISE on the open stream, promising stream 2, with an empty header block.
        let push = frame(type: 0x5, flags: 0x4, stream: id, [0, 0, 0, 2])
        do {
            try pair.inject(push)
            var out: [UInt8] = []
            try pair.client.send { out += Array($0) }
            // nghttp2 answers with GOAWAY PROTOCOL_ERROR and stops.
            #expect(out.count >= 9 && out[3] == 0x7)
        } catch {}
        #expect(!pair.client.isAlive || pair.client.openStreams == 0)
    }

    @Test func anOversizedHeaderListClosesTheConnection() throws {
        var limits = H2SessionLimits()
        limits.maxHeaderListBytes = 4096
        let pair = try Pair(limits: limits)
        let huge = String(repeating: "v", count: 8000)
        pair.server.respond = { _ in .response(status: 200, fields: [H2Field("x-big", huge)], body: [], trailers: []) }
        _ = try pair.client.startRequest(get, method: "GET", hasBody: false)
        #expect(throws: H2SessionFailure.self) { try pair.run() }
    }

    @Test func aContinuationFloodClosesTheConnection() throws {
        let pair = try Pair()
        pair.server.respond = { _ in .nothing }
        let id = try pair.client.startRequest(get, method: "GET", hasBody: false)
        try pair.run()
        // HEADERS without END_HEADERS, then CONTINUATION frames with one byte each, never ending.
        var bytes = frame(type: 0x1, flags: 0, stream: id, [0x88])  // :status 200 (static index 8)
        for _ in 0..<100 { bytes += frame(type: 0x9, flags: 0, stream: id, [0x40 | 0x00]) }
        #expect(throws: H2SessionFailure.self) { try pair.inject(bytes) }
    }

    @Test func aPingFloodClosesTheConnection() throws {
        var limits = H2SessionLimits()
        limits.maxOutboundAcks = 100
        let pair = try Pair(limits: limits)
        try pair.run()
        // 500 PINGs in one read, never letting the client write its acknowledgements out.
        var bytes: [UInt8] = []
        for _ in 0..<500 { bytes += frame(type: 0x6, stream: 0, [UInt8](repeating: 1, count: 8)) }
        #expect(throws: H2SessionFailure.self) { try pair.inject(bytes) }
    }

    @Test func aSettingsFloodClosesTheConnection() throws {
        var limits = H2SessionLimits()
        limits.maxOutboundAcks = 100
        let pair = try Pair(limits: limits)
        try pair.run()
        var bytes: [UInt8] = []
        for _ in 0..<500 { bytes += frame(type: 0x4, stream: 0) }
        #expect(throws: H2SessionFailure.self) { try pair.inject(bytes) }
    }

    @Test func aHeaderValueWithCRLFIsAStreamErrorNotAHeaderInjection() throws {
        let pair = try Pair()
        pair.server.respond = { _ in .response(status: 200, fields: [H2Field("x-evil", "a\r\ninjected: 1")], body: [], trailers: []) }
        let id = try pair.client.startRequest(get, method: "GET", hasBody: false)
        try pair.run()
        #expect(!pair.log.entries.contains { if case .response = $0 { return true } else { return false } })
        #expect(pair.log.entries.last == .closed(id, 0x1))
    }

    @Test func streamsTheProxyDidNotOpenAreRefused() throws {
        let pair = try Pair()
        pair.server.respond = { _ in .nothing }
        _ = try pair.client.startRequest(get, method: "GET", hasBody: false)
        try pair.run()
        // HEADERS on stream 2, which a server may not open (RFC 9113 §5.1.1): a connection error.
        let stray = frame(type: 0x1, flags: 0x4 | 0x1, stream: 2, [0x88])
        var failed = false
        do { try pair.inject(stray) } catch { failed = true }
        var out: [UInt8] = []
        try? pair.client.send { out += Array($0) }
        // Either the read fails, or nghttp2 answers GOAWAY PROTOCOL_ERROR and stops.
        #expect(failed || pair.client.sentGoAwayCode == 0x1)
    }
}
