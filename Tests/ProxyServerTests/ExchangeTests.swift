import Logging
import ProxyConfig
import TLS
import CEventTLS
import HTTP1
import Testing
@testable import ProxyServer

/// The exchange driven without sockets: evbuffers from `evbuffer_new()` stand for the upstream's input, the
/// client's output and the client's input, as `ClientConnection` hands them over. Each test is a case the
/// end-to-end suites cover with real peers; here each step's action is checked.
private final class Buffers {
    let upstreamInput = evbuffer_new()!
    let clientOutput = evbuffer_new()!
    let clientInput = evbuffer_new()!
    let upstreamOutput = evbuffer_new()!
    deinit {
        for b in [upstreamInput, clientOutput, clientInput, upstreamOutput] { evbuffer_free(b) }
    }

    static func add(_ buffer: OpaquePointer, _ text: String) {
        let bytes = Array(text.utf8)
        bytes.withUnsafeBytes { _ = evbuffer_add(buffer, $0.baseAddress, $0.count) }
    }

    static func take(_ buffer: OpaquePointer) -> String {
        let n = evbuffer_get_length(buffer)
        var bytes = [UInt8](repeating: 0, count: n)
        _ = bytes.withUnsafeMutableBytes { evbuffer_remove(buffer, $0.baseAddress, n) }
        return String(decoding: bytes, as: UTF8.self)
    }
}

private func exchange(_ requestHead: String, upgrade: String? = nil) throws -> Exchange {
    var e = Exchange()
    let head = try HeadParser.parseRequest(Array(requestHead.utf8))
    e.request = head
    e.requestBody = Exchange.RequestBody(Result { try BodyFraming.forRequest(head) })
    e.upgrade = upgrade
    e.startMicros = 1
    return e
}

/// Steps the response until it waits or ends; the actions in order.
private func run(_ e: inout Exchange, _ b: Buffers, highWatermark: Int = 1 << 20, maxSteps: Int = 20) -> [Exchange.ResponseStep] {
    var steps: [Exchange.ResponseStep] = []
    while steps.count < maxSteps {
        let step = e.stepResponse(from: b.upstreamInput, to: b.clientOutput, limits: HeadLimits(maxHeadBytes: 1024), highWatermark: highWatermark)
        steps.append(step)
        switch step {
        case .forwardInterim, .sendFinalHead: continue
        default: return steps
        }
    }
    return steps
}

@Suite struct ExchangeResponseTests {
    /// `Expect: 100-continue`: the interim response is handed on, then the final one and its body.
    @Test func anInterimResponseComesBeforeTheFinalOne() throws {
        let b = Buffers()
        var e = try exchange("PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        Buffers.add(b.upstreamInput, "HTTP/1.1 100 Continue\r\n\r\n")
        #expect(run(&e, b) == [.forwardInterim, .wait])
        #expect(e.responseHead.status == 100)
        Buffers.add(b.upstreamInput, "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        #expect(run(&e, b) == [.sendFinalHead, .complete])
        #expect(e.record.status == 201)
        #expect(Buffers.take(b.clientOutput) == "ok")
    }

    /// A HEAD answered with the GET's Content-Length has no body: it is complete at its head, and the upstream
    /// connection is not pooled (a server that sent the body anyway would poison the next exchange).
    @Test func aHeadAnsweredWithAContentLengthIsCompleteAtItsHead() throws {
        let b = Buffers()
        var e = try exchange("HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
        Buffers.add(b.upstreamInput, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        #expect(run(&e, b) == [.sendFinalHead, .complete])
        #expect(e.responseFraming == .none)
        #expect(e.responseAnnouncedBody)
        #expect(!UpstreamReuse.mayPool(requestMethod: "HEAD", status: 200, announcesBody: e.responseAnnouncedBody,
                                       closeDelimited: false, requestComplete: true, upstreamAllows: true))
        var zero = try exchange("HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
        Buffers.add(b.upstreamInput, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        #expect(run(&zero, b) == [.sendFinalHead, .complete])
        #expect(!zero.responseAnnouncedBody)
    }

    @Test func aTrickledHeadWaitsAndResumesItsScan() throws {
        let b = Buffers()
        var e = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        for byte in "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" {
            #expect(run(&e, b) == [.wait])
            Buffers.add(b.upstreamInput, String(byte))
        }
        Buffers.add(b.upstreamInput, "!")
        #expect(run(&e, b) == [.sendFinalHead, .complete])
    }

    /// Truncation in every framing: a length not reached, chunks without the last one, a close-delimited body
    /// ended by a bare FIN, a read timeout; each resets the client. Only close_notify completes a close-delimited body.
    @Test(arguments: [
        ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", UpstreamConnection.Event.eof(closeNotify: true), "before the body was complete"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n", .eof(closeNotify: true), "before the body was complete"),
        ("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhalf", .eof(closeNotify: false), "without close_notify"),
        ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", .readTimeout, "read timeout"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n", .error(errno: 104, tls: [], dnsError: 0), "connection failed"),
    ])
    func aBodyCutShortIsTruncated(_ response: String, _ event: UpstreamConnection.Event, _ why: String) throws {
        let b = Buffers()
        var e = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        Buffers.add(b.upstreamInput, response)
        #expect(run(&e, b) == [.sendFinalHead, .wait])
        guard case .truncate(let text) = e.upstreamEnded(event, output: b.clientOutput) else {
            Issue.record("not truncated")
            return
        }
        #expect(text.contains(why))
    }

    @Test func aCloseDelimitedBodyEndedByCloseNotifyIsComplete() throws {
        let b = Buffers()
        var e = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        Buffers.add(b.upstreamInput, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall")
        #expect(run(&e, b) == [.sendFinalHead, .wait])
        #expect(e.upstreamEnded(.eof(closeNotify: true), output: b.clientOutput) == .complete)
        // An HTTP/1.1 client gets it chunked, last chunk included.
        #expect(Buffers.take(b.clientOutput) == "3\r\nall\r\n0\r\n\r\n")
    }

    @Test func invalidChunkFramingMidBodyIsTruncated() throws {
        let b = Buffers()
        var e = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        Buffers.add(b.upstreamInput, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\nzz\r\n")
        #expect(run(&e, b) == [.sendFinalHead, .truncate("invalid chunked response body from the upstream: invalid chunk size")])
    }

    /// An upstream's trailer section reaches a chunked client in the last chunk, as received; fields that cannot
    /// be trailers are left out. An HTTP/1.0 client (close-delimited) gets the body alone.
    @Test func responseTrailersReachAChunkedClient() throws {
        let b = Buffers()
        var e = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        Buffers.add(b.upstreamInput, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\nTransfer-Encoding: chunked\r\nx-checksum: abc\r\n\r\n")
        #expect(run(&e, b) == [.sendFinalHead, .complete])
        #expect(Buffers.take(b.clientOutput) == "5\r\nhello\r\n0\r\ngrpc-status: 0\r\nx-checksum: abc\r\n\r\n")

        var old = try exchange("GET /x HTTP/1.0\r\n\r\n")
        Buffers.add(b.upstreamInput, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n")
        #expect(run(&old, b) == [.sendFinalHead, .complete])
        #expect(Buffers.take(b.clientOutput) == "hello")
    }

    /// Trickled one byte at a time, a trailer section still arrives whole.
    @Test func responseTrailersTrickledArriveWhole() throws {
        let b = Buffers()
        var e = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        Buffers.add(b.upstreamInput, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        #expect(run(&e, b) == [.sendFinalHead, .wait])
        var last: [Exchange.ResponseStep] = []
        for byte in "2\r\nhi\r\n0\r\nx-checksum: abc\r\n\r\n" {
            Buffers.add(b.upstreamInput, String(byte))
            last = run(&e, b)
        }
        #expect(last == [.complete])
        #expect(Buffers.take(b.clientOutput) == "1\r\nh\r\n1\r\ni\r\n0\r\nx-checksum: abc\r\n\r\n")  // data as it came
    }

    @Test(arguments: ["HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                      "HTTP/1.1 200 OK\r\nX: " + String(repeating: "a", count: 2000) + "\r\n\r\n",
                      "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"])
    func anInvalidHeadFailsBeforeAnythingReachesTheClient(_ response: String) throws {
        let b = Buffers()
        var e = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        Buffers.add(b.upstreamInput, response)
        let steps = run(&e, b)
        guard case .fail(let answer)? = steps.last else {
            Issue.record("\(steps)")
            return
        }
        #expect(answer.status == 502)
        #expect(evbuffer_get_length(b.clientOutput) == 0)
    }

    /// A 101 goes to a relay only when the request asked for the upgrade; after it, the end of the upstream is
    /// the relay's business, not a response's.
    @Test func aSwitchIsTakenOnlyForAnUpgradeRequest() throws {
        let b = Buffers()
        var e = try exchange("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", upgrade: "websocket")
        Buffers.add(b.upstreamInput, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframes")
        #expect(run(&e, b) == [.switchProtocols(upgrade: "websocket")])
        #expect(Buffers.take(b.upstreamInput) == "frames")  // left for the relay
        #expect(run(&e, b) == [.wait])
        #expect(e.upstreamEnded(.eof(closeNotify: false), output: b.clientOutput) == .closeUpstream)

        var plain = try exchange("GET /ws HTTP/1.1\r\nHost: a\r\n\r\n")
        Buffers.add(b.upstreamInput, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
        guard case .fail(let answer)? = run(&plain, b).last else {
            Issue.record("a 101 to a plain request was taken")
            return
        }
        #expect(answer.status == 502)
    }

    /// An HTTP/1.1 upstream that sends interim responses without end: each would be queued for the client. As
    /// over HTTP/2 (`H2UpstreamStream.maxInterimResponses`), 16 are passed on; the next one fails the exchange
    /// with a 502 naming the flood (nothing of a final response went out, so the client gets a clear answer).
    @Test func aFloodOfInterimResponsesIsAnswered502() throws {
        let b = Buffers()
        var e = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        Buffers.add(b.upstreamInput, String(repeating: "HTTP/1.1 100 Continue\r\n\r\n", count: 1000)
            + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        var steps: [Exchange.ResponseStep] = []
        for _ in 0..<40 {
            let step = e.stepResponse(from: b.upstreamInput, to: b.clientOutput, limits: HeadLimits(maxHeadBytes: 1024), highWatermark: 1 << 20)
            steps.append(step)
            if step != .forwardInterim { break }
        }
        #expect(steps.dropLast().allSatisfy { $0 == .forwardInterim })
        #expect(steps.count - 1 == 16)
        guard case .fail(let answer)? = steps.last else {
            Issue.record("no failure after \(steps.count) steps")
            return
        }
        #expect(answer.status == 502)
        #expect(answer.errorType == .httpProtocolError)
        #expect(answer.details.contains("more than 16 interim"))
        #expect(!e.progress.responseStarted)  // the connection machine answers, it does not truncate

        // Up to the limit is a response like any other.
        var fine = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        let c = Buffers()
        Buffers.add(c.upstreamInput, String(repeating: "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", count: 16)
            + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        #expect(run(&fine, c, maxSteps: 40) == Array(repeating: .forwardInterim, count: 16) + [.sendFinalHead, .complete])
    }

    /// A slow client: the body stops at the watermark, and goes on once the client's output drained.
    @Test func aFullClientOutputPausesTheUpstream() throws {
        let b = Buffers()
        var e = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        Buffers.add(b.upstreamInput, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n1234")
        #expect(run(&e, b, highWatermark: 4) == [.sendFinalHead, .wait])
        Buffers.add(b.upstreamInput, "5678")
        #expect(run(&e, b, highWatermark: 4) == [.pauseUpstream])
        #expect(Buffers.take(b.clientOutput) == "1234")
        #expect(run(&e, b, highWatermark: 4) == [.complete])
        #expect(Buffers.take(b.clientOutput) == "5678")
    }

    /// The client's output holds at most the watermark: a body that arrived in one piece larger than the room
    /// left is moved up to the watermark, the rest when the client has taken some (so a slow client holds at most
    /// the watermark here, plus what the upstream side holds: for HTTP/2, the stream's window).
    @Test func aBodyIsMovedOnlyUpToTheWatermark() throws {
        for framing in ["Content-Length: 12", "Transfer-Encoding: chunked"] {
            let b = Buffers()
            var e = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            let body = framing.hasPrefix("Content") ? "abcdefghijkl" : "c\r\nabcdefghijkl\r\n0\r\n\r\n"
            Buffers.add(b.upstreamInput, "HTTP/1.1 200 OK\r\n\(framing)\r\n\r\n" + body)
            #expect(e.stepResponse(from: b.upstreamInput, to: b.clientOutput, limits: HeadLimits(maxHeadBytes: 1024), highWatermark: 1 << 20) == .sendFinalHead)
            let watermark = evbuffer_get_length(b.clientOutput) + 4
            _ = run(&e, b, highWatermark: watermark)
            // Re-chunked, the body bytes come with their chunk's framing ("4\r\n" before, CRLF after).
            #expect(evbuffer_get_length(b.clientOutput) <= watermark + (framing.hasPrefix("Content") ? 0 : 5), "\(framing)")
            var got = ""
            for _ in 0..<20 {
                got += Buffers.take(b.clientOutput)
                if run(&e, b, highWatermark: watermark).last == .complete { break }
            }
            got += Buffers.take(b.clientOutput)
            #expect(got.hasSuffix(framing.hasPrefix("Content") ? "abcdefghijkl" : "0\r\n\r\n"), "\(framing)")
        }
    }

    @Test func theUpstreamFailingBeforeAnyHeadIsAFailureBeforeTheResponse() throws {
        let b = Buffers()
        var e = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(e.upstreamEnded(.eof(closeNotify: false), output: b.clientOutput) == .failedBeforeResponse)
        #expect(e.upstreamEnded(.connectTimeout, output: b.clientOutput) == .failedBeforeResponse)
    }

    /// A pooled connection the server closed just as it was reused: an idempotent request without a body is
    /// sent once more on a fresh connection; nothing else is.
    @Test func aStalePooledConnectionIsRetriedOnceForAnIdempotentRequest() throws {
        // The HTTP/1.1 channel's part: only a reused connection that ended by EOF or reset may not have been read.
        let unprocessed = UpstreamConnection.requestMayBeUnprocessed
        #expect(unprocessed(.eof(closeNotify: false), true))
        #expect(unprocessed(.error(errno: 104, tls: [], dnsError: 0), true))
        #expect(!unprocessed(.eof(closeNotify: false), false))  // a new connection failed
        #expect(!unprocessed(.readTimeout, true))
        #expect(!unprocessed(.connectTimeout, true))
        // The exchange's part: once, for an idempotent request without a body.
        let get = try exchange("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(get.mayRetry(requestUnprocessed: true))
        #expect(!get.mayRetry(requestUnprocessed: false))
        var again = get
        again.retried = true
        #expect(!again.mayRetry(requestUnprocessed: true))
        let post = try exchange("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n")
        #expect(!post.mayRetry(requestUnprocessed: true))
        let getWithBody = try exchange("GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n")
        #expect(!getWithBody.mayRetry(requestUnprocessed: true))
    }
}

/// The connection's machine keeps no copy of how far the exchange has got: it reads `Exchange.progress`.
@Suite struct ExchangeProgressTests {
    @Test func progressFollowsTheRequestAndResponseMessages() throws {
        let b = Buffers()
        var e = try exchange("PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
        #expect(e.progress == ExchangeProgress(requestComplete: false, responseStarted: false))
        Buffers.add(b.clientInput, "ok")
        #expect(try e.moveRequestBody(from: b.clientInput, to: b.upstreamOutput, highWatermark: 1 << 20) == .complete)
        #expect(e.progress == ExchangeProgress(requestComplete: true, responseStarted: false))
        Buffers.add(b.upstreamInput, "HTTP/1.1 100 Continue\r\n\r\n")
        #expect(run(&e, b) == [.forwardInterim, .wait])
        #expect(!e.progress.responseStarted)  // an interim response leaves an error answerable
        Buffers.add(b.upstreamInput, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n")
        #expect(run(&e, b) == [.sendFinalHead, .wait])
        #expect(e.progress == ExchangeProgress(requestComplete: true, responseStarted: true))
    }

    @Test func aHeadWithInvalidFramingNeverCompletesItsBody() {
        let body = Exchange.RequestBody(Result<BodyFraming, any Error> { throw HTTPParseError.invalidContentLength })
        #expect(!body.isDone)
        #expect(Exchange.RequestBody(Result<BodyFraming, any Error> { .none }).isDone)
    }
}

@Suite struct ExchangeRequestTests {
    /// Pipelining: the body is moved up to its length; the next request's head stays in the client's input.
    @Test func aPipelinedHeadAfterTheBodyStaysForTheNextExchange() throws {
        let b = Buffers()
        var e = try exchange("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        Buffers.add(b.clientInput, "helloGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(try e.moveRequestBody(from: b.clientInput, to: b.upstreamOutput, highWatermark: 1 << 20) == .complete)
        #expect(Buffers.take(b.upstreamOutput) == "hello")
        #expect(Buffers.take(b.clientInput) == "GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        var chunked = try exchange("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        Buffers.add(b.clientInput, "5;ext=1\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\n")
        #expect(try chunked.moveRequestBody(from: b.clientInput, to: b.upstreamOutput, highWatermark: 1 << 20) == .complete)
        #expect(Buffers.take(b.upstreamOutput) == "5\r\nhello\r\n0\r\n\r\n")  // canonical framing, extension dropped
        #expect(Buffers.take(b.clientInput) == "GET /next HTTP/1.1\r\n")
    }

    /// An early 413 while the upload is blocked (the upstream reads none of it): the body stops at the watermark,
    /// the answer still goes through, and the upstream connection cannot be pooled (the body never finished).
    @Test func anEarlyAnswerWhileTheUploadIsBlocked() throws {
        let b = Buffers()
        var e = try exchange("PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        Buffers.add(b.clientInput, String(repeating: "x", count: 40))
        #expect(try e.moveRequestBody(from: b.clientInput, to: b.upstreamOutput, highWatermark: 10) == .waiting)
        Buffers.add(b.clientInput, String(repeating: "x", count: 40))  // the upstream read nothing of the first 40
        #expect(try e.moveRequestBody(from: b.clientInput, to: b.upstreamOutput, highWatermark: 10) == .destinationFull)
        #expect(evbuffer_get_length(b.clientInput) == 40)
        Buffers.add(b.upstreamInput, "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbig\n")
        #expect(run(&e, b) == [.sendFinalHead, .complete])
        #expect(!e.requestBody.isDone)
        #expect(!UpstreamReuse.mayPool(requestMethod: "PUT", status: 413, announcesBody: false, closeDelimited: false,
                                       requestComplete: e.requestBody.isDone, upstreamAllows: e.upstreamAllowsReuse))
    }

    @Test func aChunkLineOutsideTheGrammarIsRefusedWith400() throws {
        let b = Buffers()
        var e = try exchange("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        Buffers.add(b.clientInput, "5;\r\nhello\r\n0\r\n\r\n")
        guard case .fail(let answer) = e.stepRequest(from: b.clientInput, to: b.upstreamOutput, highWatermark: 1 << 20) else {
            Issue.record("accepted")
            return
        }
        #expect(answer.status == 400)
        #expect(evbuffer_get_length(b.upstreamOutput) == 0)
    }

    /// A chunked request's trailer section goes upstream after the last chunk (RFC 9112 §7.1.2), each field as
    /// received; fields that cannot be trailers (framing, routing, credentials) are left out.
    @Test func requestTrailersGoUpstreamInTheLastChunk() throws {
        let b = Buffers()
        var e = try exchange("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        Buffers.add(b.clientInput, "5\r\nhello\r\n0\r\nx-checksum: abc\r\nContent-Length: 5\r\nProxy-Authorization: Basic eA==\r\ngrpc-timeout: 1S\r\n\r\n")
        #expect(e.stepRequest(from: b.clientInput, to: b.upstreamOutput, highWatermark: 1 << 20) == .complete)
        #expect(Buffers.take(b.upstreamOutput) == "5\r\nhello\r\n0\r\nx-checksum: abc\r\ngrpc-timeout: 1S\r\n\r\n")
        #expect(e.record.bytesIn == 5)
    }

    /// A trailer field line is held to the rules of a header field line: 400, naming the fault, never the value.
    @Test(arguments: ["x-a: 1\r\n  zzsecret", "x-a: zzsecret\u{0}", "x a: zzsecret", "zzsecret", "x-a : zzsecret"])
    func aMalformedRequestTrailerIsRefusedWith400(_ line: String) throws {
        let b = Buffers()
        var e = try exchange("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        Buffers.add(b.clientInput, "5\r\nhello\r\n0\r\n" + line + "\r\n\r\n")
        guard case .fail(let answer) = e.stepRequest(from: b.clientInput, to: b.upstreamOutput, highWatermark: 1 << 20) else {
            Issue.record("accepted")
            return
        }
        #expect(answer.status == 400)
        #expect(answer.details.contains("trailer"))
        #expect(!answer.details.contains("zzsecret"))
    }

    @Test func theRequestStepsPauseTheClientWhenTheUpstreamIsFull() throws {
        let b = Buffers()
        var e = try exchange("PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n")
        Buffers.add(b.clientInput, "abc")
        #expect(e.stepRequest(from: b.clientInput, to: b.upstreamOutput, highWatermark: 3) == .wait)
        Buffers.add(b.clientInput, "def")
        #expect(e.stepRequest(from: b.clientInput, to: b.upstreamOutput, highWatermark: 3) == .pauseClient)
        #expect(Buffers.take(b.upstreamOutput) == "abc")
        #expect(e.stepRequest(from: b.clientInput, to: b.upstreamOutput, highWatermark: 3) == .complete)
        #expect(Buffers.take(b.upstreamOutput) == "def")
    }
}

/// A 101 hand-over that cannot happen, without sockets: what the exchange and the connection's machine tell the
/// shell to do, and that the upstream connection whose hand-over failed is closed and leaves the worker's
/// registry (a worker with its event base, never run, and an upstream connection never started: nothing is dialled
/// and no packet is sent; the worker's resolver, pointed at 127.0.0.1, is never asked). `test_socket_io_attacks.AFailedHandOverAfter101` checks the whole of it with real sockets.
@Suite struct AFailedHandOverTests {

    static func exchanging() -> Machine {
        var m = Machine(clock: FakeClock(), headerTimeoutMillis: 5_000, clientTimeoutMillis: 60_000, lingerMillis: 2_000)
        m.headParsed(keepAlive: true)
        return m
    }

    /// The upstream answers 101 and closes in the same read: the switch is taken (the leftover is the relay's),
    /// and the end that follows is the upstream connection's to close, not a response to complete or cut.
    @Test func a101AndTheUpstreamsEOFInTheSameRead() throws {
        let b = Buffers()
        var e = try exchange("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", upgrade: "websocket")
        Buffers.add(b.upstreamInput, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nlast")
        #expect(run(&e, b) == [.switchProtocols(upgrade: "websocket")])
        #expect(evbuffer_get_length(b.clientOutput) == 0)  // the 101 head is the shell's to write
        #expect(e.upstreamEnded(.eof(closeNotify: false), output: b.clientOutput) == .closeUpstream)
        #expect(evbuffer_get_length(b.clientOutput) == 0)  // no last chunk, no answer after the 101
        #expect(Buffers.take(b.upstreamInput) == "last")
    }

    /// The hand-over's bufferevent cannot be made: the shell tears the connection down (`machine.aborted()`);
    /// nothing that arrives late (the client's FIN or error, the timer, the exchange's own end or failure) makes
    /// the machine act again on the torn-down connection.
    @Test func afterAFailedHandOverNothingLateActs() {
        var m = Self.exchanging()
        m.responseKeepAlive(false)  // as `switchProtocols` does before it hands over
        _ = m.aborted()
        #expect(m.state == .closed)
        let started = ExchangeProgress(requestComplete: true, responseStarted: true)
        #expect(m.clientEOF(started) == .none)
        #expect(m.clientError() == .none)
        m.clock.nowMillis += 120_000
        #expect(m.timerFired() == .none)
        #expect(m.exchangeEnded(keepAlive: false) == .none)
        #expect(m.exchangeFailed(started) == .none)
        #expect(m.responseTruncated() == .none)
        #expect(m.state == .closed)
    }

    /// The upstream connection cannot hand its socket over (here: it never got one): it is closed and leaves the
    /// worker's registry, so nothing is left reading for the connection that tears itself down. Issue 19's crash:
    /// `detach()` returned nil without closing, and the registered connection later called a freed owner.
    @Test func anUpstreamWhoseHandOverFailedIsClosedAndUnregistered() throws {
        let config = try ConfigLoader.parse("""
            [proxy]
            listen = "127.0.0.1:0"
            [upstream]
            nameservers = ["127.0.0.1"]
            [log]
            access = "off"
            """, file: "test.conf", baseDirectory: "/tmp")
        let runtime = try ProxyRuntime(config: config)
        let worker = try Worker(id: 0, runtime: runtime, accessLog: try AccessLog(config.log), metrics: ProxyMetrics(),
                                health: WorkerHealth(count: 1), connections: ConnectionCounter(), logger: Logger(label: "test"))
        let context = try ClientTLSContext(trust: config.upstream.trust, credential: nil, identityName: nil)
        let upstream = UpstreamConnection(key: PoolKey(host: "a.test", port: 443, connect: nil, context: ObjectIdentifier(context)),
                                          context: context, worker: worker, generation: runtime.generation)
        worker.upstreams.opened(upstream)
        #expect(worker.upstreams.contains(upstream))
        #expect(upstream.switchToRelay() == nil)
        #expect(upstream.state == .closed)
        #expect(!worker.upstreams.contains(upstream))
        #expect(worker.openUpstreams == 0)
        upstream.abort()  // the shell's teardown that follows: closing again does nothing
        #expect(worker.openUpstreams == 0)
    }

    /// A 101 to a request that asked for no upgrade cannot be handed over: nothing went to the client, so the
    /// machine answers a 502 in its place (the upstream connection goes with the failed exchange).
    @Test func a101ToARequestWithoutUpgradeIsAnswered502() throws {
        let b = Buffers()
        var e = try exchange("GET /ws HTTP/1.1\r\nHost: a\r\n\r\n")
        Buffers.add(b.upstreamInput, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        guard case .fail(let answer)? = run(&e, b).last else {
            Issue.record("a 101 to a plain request was not refused")
            return
        }
        #expect(answer.status == 502)
        #expect(answer.errorType == .httpProtocolError)
        #expect(evbuffer_get_length(b.clientOutput) == 0)
        #expect(!e.progress.responseStarted)
        var m = Self.exchanging()
        #expect(m.exchangeFailed(e.progress) == .answer)
        // The upstream's EOF after it is still before any response: no truncation of something never sent.
        #expect(e.upstreamEnded(.eof(closeNotify: false), output: b.clientOutput) == .failedBeforeResponse)
    }
}
