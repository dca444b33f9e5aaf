import CEventTLS
import Foundation
import Testing
import ProxyConfig
@testable import ProxyServer

/// The access log's serialiser and its batched writer, without sockets: lines parsed back with a JSON parser,
/// written to real files and pipes.
@Suite struct AccessLogTests {
    static func record() -> AccessRecord {
        var r = AccessRecord()
        r.startEpochMillis = 1_800_000_000_123
        r.client = "127.0.0.1:40000"
        r.method = "GET"
        r.host = "api.mygreatbank.test"
        r.port = 443
        r.path = "/v1/accounts"
        r.route = "bank API"
        r.identity = "us"
        r.certificateSerial = "0A1B"
        r.status = 200
        r.upstreamStatus = 200
        r.bytesIn = 120
        r.bytesOut = 4567
        r.durationMs = 12
        r.connectMs = 0
        r.ttfbMs = 3
        r.reused = true
        r.tlsVersion = "TLSv1.3"
        r.cipher = "TLS_AES_128_GCM_SHA256"
        return r
    }

    static func parse(_ line: String) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8), options: [])
        return try #require(object as? [String: Any])
    }

    @Test func h2ExchangesNameTheProtocolAndStream() throws {
        var r = Self.record()
        r.upstreamProtocol = "h2"
        r.upstreamStreamID = 7
        let fields = try Self.parse(r.json())
        #expect(fields["upstream_protocol"] as? String == "h2")
        #expect(fields["upstream_stream"] as? Int == 7)
        #expect(r.text().contains(" upstream_protocol=h2 stream=7"))
        r.upstreamProtocol = "http/1.1"
        r.upstreamStreamID = nil
        #expect(!r.text().contains("upstream_protocol"))
    }

    @Test func jsonHasEveryFieldWithItsType() throws {
        let fields = try Self.parse(Self.record().json())
        #expect(Set(fields.keys) == ["time", "client", "listener", "intercepted", "method", "scheme", "host", "port",
                                     "path", "route", "identity", "cert_serial", "status", "upstream_status",
                                     "bytes_in", "bytes_out", "duration_ms", "connect_ms", "tcp_connect_ms",
                                     "tls_handshake_ms", "ttfb_ms", "reused", "tls_version", "cipher", "upstream_protocol",
                                     "upstream_stream", "proxy_status"])
        #expect(fields["time"] as? String == "2027-01-15T08:00:00.123Z")
        #expect(fields["route"] as? String == "bank API")
        #expect(fields["port"] as? Int == 443)
        #expect(fields["bytes_out"] as? Int == 4567)
        #expect(fields["reused"] as? Bool == true)
        #expect(fields["intercepted"] as? Bool == false)
        #expect(fields["tcp_connect_ms"] is NSNull)
        #expect(fields["proxy_status"] is NSNull)
        #expect(fields["connect_ms"] as? Int == 0)
    }

    @Test func jsonEscapesQuotesBackslashesControlCharactersAndKeepsNonASCII() throws {
        var r = Self.record()
        r.path = "/a\"b\\c\nd\re\tf\u{01}g\u{1f}h\u{7f}"
        r.route = "café ☕ 🚀 \u{2028}"
        r.identity = "\""
        r.proxyStatus = "mtls-proxy; error=\"x\""
        let line = r.json()
        #expect(!line.contains("\n"))
        let fields = try Self.parse(line)
        #expect(fields["path"] as? String == r.path)
        #expect(fields["route"] as? String == r.route)
        #expect(fields["identity"] as? String == "\"")
        #expect(fields["proxy_status"] as? String == r.proxyStatus)
        #expect(line.contains(#""path":"/a\"b\\c\nd\re\tf\u0001g\u001fh"#))
    }

    @Test func everyCharacterThatNeedsEscapingIsEscapedAtEveryPosition() throws {
        var r = Self.record()
        for c in ["\"", "\\", "\n", "\r", "\t", "\u{00}", "\u{01}", "\u{1f}", " ", "!", "#", "[", "]", "~", "\u{7f}", "é", "€", "😀"] {
            for position in 0..<19 {
                r.path = String(repeating: "a", count: position) + c + String(repeating: "b", count: 18 - position)
                let fields = try Self.parse(r.json())
                #expect(fields["path"] as? String == r.path, "\(c.unicodeScalars.map(\.value)) at \(position)")
            }
        }
        r.path = ""
        r.route = ""
        #expect(try Self.parse(r.json())["path"] as? String == "")
        #expect(r.json().contains(#""path":"","route":"","#))
    }

    @Test func numbersAndTimes() throws {
        let cases: [(Int, String)] = [(0, "1970-01-01T00:00:00.000Z"), (999, "1970-01-01T00:00:00.999Z"),
                                      (1_000, "1970-01-01T00:00:01.000Z"), (951_782_400_007, "2000-02-29T00:00:00.007Z"),
                                      (4_102_444_799_999, "2099-12-31T23:59:59.999Z")]
        let buffer = LogLineBuffer(capacity: 8)  // grows as needed
        for (millis, text) in cases {
            buffer.removeAll()
            buffer.iso8601(millis: millis)
            #expect(buffer.string == text)
            #expect(buffer.string == UTCTime.iso8601(millis: millis))
        }
        for v in [0, 7, 10, 99, 100, 65_535, -1, -120, Int.max, Int.min] {
            buffer.removeAll()
            buffer.decimal(v)
            #expect(buffer.string == String(v))
        }
    }

    @Test func textFormat() {
        var r = Self.record()
        r.intercepted = true
        r.proxyStatus = "mtls-proxy; error=x"
        #expect(r.text() == #"2027-01-15T08:00:00.123Z 127.0.0.1:40000 "GET http://api.mygreatbank.test:443/v1/accounts" 200 route="bank API" identity=us serial=0A1B upstream_status=200 in=120 out=4567 ms=12 connect_ms=0 tls_ms=- ttfb_ms=3 reused=true tls=TLSv1.3 intercepted=true proxy_status="mtls-proxy; error=x""#)
    }

    static func temporaryFile() -> String {
        "\(NSTemporaryDirectory())access-log-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log"
    }

    static func settings(_ path: String, _ format: LogSettings.Format = .json) -> LogSettings {
        var s = LogSettings()
        s.access = .file(path)
        s.format = format
        return s
    }

    /// A batched writer to `path` (JSON lines) on an event base of its own, for the length of `body`; the writer
    /// is detached and the base freed afterwards.
    static func withWriter(writingTo path: String, _ body: (AccessLogWriter, OpaquePointer?) throws -> Void) throws {
        let base = event_base_new()
        defer { event_base_free(base) }
        let writer = AccessLogWriter(log: try AccessLog(settings(path)), base: base)
        defer { writer.detach() }
        try body(writer, base)
    }

    @Test func linesAreBufferedUntilFlushedAndNeverSplit() throws {
        let path = Self.temporaryFile()
        defer { unlink(path) }
        try Self.withWriter(writingTo: path) { writer, _ in
            var r = Self.record()
            for i in 0..<10 {
                r.bytesIn = i
                writer.write(r)
            }
            #expect(try String(contentsOfFile: path, encoding: .utf8).isEmpty)  // not one write per record
            writer.flush()
            let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
            #expect(lines.count == 10)
            for (i, line) in lines.enumerated() { #expect(try Self.parse(String(line))["bytes_in"] as? Int == i) }
            // Past the flush threshold the buffer is written by itself, in whole lines.
            r.path = "/" + String(repeating: "p", count: 1000)
            for _ in 0..<(AccessLogWriter.flushBytes / 1000 + 2) { writer.write(r) }
            let content = try String(contentsOfFile: path, encoding: .utf8)
            #expect(content.count > 10_000)
            #expect(content.hasSuffix("\n"))
            for line in content.split(separator: "\n") { _ = try Self.parse(String(line)) }
        }
    }

    @Test func theTimerFlushesWithin100ms() throws {
        let path = Self.temporaryFile()
        defer { unlink(path) }
        try Self.withWriter(writingTo: path) { writer, base in
            writer.write(Self.record())
            event_base_dispatch(base)  // returns when the one-shot flush timer has run
            let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
            #expect(lines.count == 1)
        }
    }

    @Test func replacingTheLogWritesBufferedLinesToTheOldOne() throws {
        let old = Self.temporaryFile(), new = Self.temporaryFile()
        defer { unlink(old); unlink(new) }
        try Self.withWriter(writingTo: old) { writer, _ in
            writer.write(Self.record())
            writer.replace(with: try AccessLog(Self.settings(new, .text)))
            writer.write(Self.record())
            writer.detach()
            #expect(try String(contentsOfFile: old, encoding: .utf8).split(separator: "\n").count == 1)
            #expect(try String(contentsOfFile: new, encoding: .utf8).hasPrefix("2027-01-15T08:00:00.123Z 127.0.0.1:40000 \"GET"))
        }
    }

    @Test func intoAPipeLinesGoInWholePiecesOfAtMostPIPE_BUF() {
        // 40 lines of ~450 bytes, one of 6,000, then 10 short ones, in one batch.
        var batch = ""
        var r = Self.record()
        for i in 0..<40 {
            r.bytesIn = i
            batch += r.json() + "\n"
        }
        r.path = "/" + String(repeating: "q", count: 6000)
        batch += r.json() + "\n"
        r.path = "/"
        for _ in 0..<10 { batch += r.json() + "\n" }
        let bytes = Array(batch.utf8)
        var pieces: [Range<Int>] = []
        bytes.withUnsafeBufferPointer { buffer in
            AccessLog.wholeLinePieces(buffer.baseAddress!, count: buffer.count, limit: 4096) { start, end in
                pieces.append(start..<end)
                return true
            }
        }
        #expect(pieces.first?.lowerBound == 0)
        #expect(pieces.last?.upperBound == bytes.count)
        for (a, b) in zip(pieces, pieces.dropFirst()) { #expect(a.upperBound == b.lowerBound) }
        for piece in pieces {
            #expect(bytes[piece.upperBound - 1] == 10)
            let lines = bytes[piece].filter { $0 == 10 }.count
            #expect(piece.count <= 4096 || lines == 1)
        }
        #expect(pieces.count >= 5)
    }
}
