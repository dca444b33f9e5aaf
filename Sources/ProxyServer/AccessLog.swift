import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// One record per request. It never holds the query string or header values, which carry secrets.
struct AccessRecord {
    var startEpochMillis: Int = 0
    var client: String = ""
    var listener: String = "proxy"
    /// A request that came inside an intercepted CONNECT tunnel.
    var intercepted = false
    /// "plain" for a request that came as plain HTTP inside a CONNECT tunnel (to port 80); nil otherwise.
    var tunnel: String?
    var method: String = ""
    var scheme: String = "http"
    var host: String = ""
    var port: Int = 0
    var path: String = ""
    var route: String = ""
    var identity: String?
    var certificateSerial: String?
    var status: Int = 0
    var upstreamStatus: Int?
    var bytesIn: Int = 0
    var bytesOut: Int = 0
    var durationMs: Int = 0
    /// DNS, TCP connect and TLS handshake of a new upstream connection; 0 when a pooled one was reused.
    var connectMs: Int?
    /// The parts of it: DNS and TCP connect, then the TLS handshake.
    var tcpConnectMs: Int?
    var tlsHandshakeMs: Int?
    var ttfbMs: Int?
    var reused: Bool = false
    var tlsVersion: String?
    var cipher: String?
    var proxyStatus: String?

    /// The record as one JSON object (no newline): what `[log] format = "json"` writes.
    func json() -> String {
        let line = LogLineBuffer(capacity: 512)
        line.appendJSON(self)
        return line.string
    }

    /// The record as one text line (no newline): what `[log] format = "text"` writes.
    func text() -> String {
        let line = LogLineBuffer(capacity: 512)
        line.appendText(self)
        return line.string
    }
}

/// Where access records go: standard output, a file (opened for appending), or nowhere. Shared by the workers;
/// each writes through its own `AccessLogWriter`, which hands over whole lines in batches.
final class AccessLog: @unchecked Sendable {
    let settings: LogSettings
    private let fd: Int32
    private let ownsFD: Bool
    /// Writes of up to PIPE_BUF bytes to a pipe are atomic; larger ones may interleave with another writer's.
    /// A regular file opened for appending takes a whole write(2) at once.
    private let atomicWriteLimit: Int?

    init(_ settings: LogSettings) throws {
        self.settings = settings
        switch settings.access {
        case .stdout:
            fd = 1
            ownsFD = false
        case .off:
            fd = -1
            ownsFD = false
        case .file(let path):
            let opened = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard opened >= 0 else {
                throw ConfigError(file: "", key: "log.access", message: "cannot open \(path) for appending: \(String(cString: strerror(errno)))")
            }
            fd = opened
            ownsFD = true
        }
        var st = stat()
        if fd >= 0, fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG {
            atomicWriteLimit = nil
        } else {
            atomicWriteLimit = Int(PIPE_BUF)
        }
    }

    deinit { if ownsFD { close(fd) } }

    var enabled: Bool { fd >= 0 }
    var json: Bool { settings.format == .json }

    /// Writes `count` bytes of whole lines. Into a pipe or a terminal, in pieces of at most PIPE_BUF bytes cut
    /// at line ends (a longer line alone), so that lines from several workers never interleave.
    func write(_ bytes: UnsafePointer<UInt8>, count: Int) {
        guard fd >= 0, count > 0 else { return }
        guard let limit = atomicWriteLimit, count > limit else {
            writeFully(bytes, count: count)
            return
        }
        Self.wholeLinePieces(bytes, count: count, limit: limit) { start, end in
            writeFully(bytes + start, count: end - start)
        }
    }

    /// Cuts `count` bytes of whole lines into consecutive pieces [start, end) of at most `limit` bytes, each
    /// ending with a line end; a line longer than `limit` is a piece of its own. Stops when `body` says false.
    static func wholeLinePieces(_ bytes: UnsafePointer<UInt8>, count: Int, limit: Int, _ body: (Int, Int) -> Bool) {
        var start = 0
        while start < count {
            var end = min(count, start + limit)
            if end < count {
                // The last line end within the limit, or else the end of the first (long) line.
                var cut = end
                while cut > start && bytes[cut - 1] != 10 { cut -= 1 }
                if cut > start {
                    end = cut
                } else {
                    while end < count && bytes[end - 1] != 10 { end += 1 }
                }
            }
            guard body(start, end) else { return }
            start = end
        }
    }

    @discardableResult
    private func writeFully(_ bytes: UnsafePointer<UInt8>, count: Int) -> Bool {
        var offset = 0
        while offset < count {
            let n = Glibc.write(fd, bytes + offset, count - offset)
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                return false  // a full disk or a closed pipe: the lines are lost, the proxy goes on
            }
            offset += n
        }
        return true
    }
}

/// One worker's access log: records are serialised into a buffer and written in batches, never a line split.
/// The buffer is written when it passes `flushBytes`, 100 ms after its first line (a timer on the worker's loop),
/// and when the worker drains, reloads (SIGHUP) and ends; so no write(2) per request.
final class AccessLogWriter {
    static let flushBytes = 32 * 1024
    static let flushDelayMs = 100

    private(set) var log: AccessLog
    /// Grows to `flushBytes` and a line once records are written; small while the log is off.
    let buffer: LogLineBuffer
    private var timer: OpaquePointer?
    private var timerArmed = false

    /// `base`: the worker's event loop, for the flush timer; without one, every record is written at once.
    init(log: AccessLog, base: OpaquePointer?) {
        self.log = log
        buffer = LogLineBuffer(capacity: log.enabled ? Self.flushBytes + 4096 : 64)
        if let base {
            timer = mtls_evtimer_new(base, accessLogFlushCallback, Unmanaged.passUnretained(self).toOpaque())
        }
    }

    deinit { detach() }

    func write(_ record: AccessRecord) {
        guard log.enabled else { return }
        if log.json {
            buffer.appendJSON(record)
        } else {
            buffer.appendText(record)
        }
        buffer.byte(10)
        if buffer.count >= Self.flushBytes || timer == nil {
            flush()
        } else if !timerArmed {
            timerArmed = true
            _ = mtls_evtimer_add_ms(timer, Self.flushDelayMs)
        }
    }

    /// Writes what is buffered.
    func flush() {
        if timerArmed, let timer {
            event_del(timer)
        }
        timerArmed = false
        guard buffer.count > 0 else { return }
        log.write(buffer.base, count: buffer.count)
        buffer.removeAll()
    }

    /// After a reload: what is buffered goes to the log it was written for, what follows to `next`.
    func replace(with next: AccessLog) {
        flush()
        log = next
    }

    /// Writes what is buffered and lets go of the timer; call before the event loop is freed. Records written
    /// after this are written at once.
    func detach() {
        flush()
        if let timer { event_free(timer) }
        timer = nil
    }

    fileprivate func timerFired() {
        timerArmed = false
        flush()
    }
}

private func accessLogFlushCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<AccessLogWriter>.fromOpaque(ctx!).takeUnretainedValue().timerFired()
}

/// A growable byte buffer that access records are serialised into: JSON and text straight from the record's
/// fields, strings escaped from their UTF-8 storage, numbers and the time formatted in place. No Foundation,
/// no intermediate `String`.
final class LogLineBuffer {
    private(set) var base: UnsafeMutablePointer<UInt8>
    private(set) var capacity: Int
    private(set) var count = 0
    /// "YYYY-MM-DDTHH:MM:SS" of `cachedSecond`: gmtime_r once a second, not once a record.
    private let cachedTime = UnsafeMutablePointer<UInt8>.allocate(capacity: 19)
    private var cachedSecond = Int.min

    init(capacity: Int) {
        self.capacity = max(capacity, 64)
        base = .allocate(capacity: self.capacity)
    }

    deinit {
        base.deallocate()
        cachedTime.deallocate()
    }

    var string: String { String(decoding: UnsafeBufferPointer(start: base, count: count), as: UTF8.self) }

    func removeAll() { count = 0 }

    @inline(__always)
    private func reserve(_ n: Int) {
        if count + n > capacity { grow(count + n) }
    }

    private func grow(_ needed: Int) {
        let next = max(needed, capacity * 2)
        let bigger = UnsafeMutablePointer<UInt8>.allocate(capacity: next)
        bigger.update(from: base, count: count)
        base.deallocate()
        base = bigger
        capacity = next
    }

    @inline(__always)
    func byte(_ b: UInt8) {
        reserve(1)
        base[count] = b
        count += 1
    }

    /// ASCII text known at compile time: field names and punctuation.
    @inline(__always)
    func ascii(_ s: StaticString) {
        let n = s.utf8CodeUnitCount
        reserve(n)
        (base + count).update(from: s.utf8Start, count: n)
        count += n
    }

    func bytes(_ p: UnsafeBufferPointer<UInt8>) {
        guard let start = p.baseAddress, !p.isEmpty else { return }
        reserve(p.count)
        (base + count).update(from: start, count: p.count)
        count += p.count
    }

    /// A string's UTF-8 as it is (the text format's unquoted fields).
    func raw(_ s: String) {
        if s.utf8.withContiguousStorageIfAvailable({ bytes($0) }) == nil {
            var copy = s
            copy.withUTF8 { bytes($0) }
        }
    }

    func decimal(_ value: Int) {
        reserve(20)
        var v = value
        if v < 0 {
            base[count] = UInt8(ascii: "-")
            count += 1
            if v == Int.min {
                ascii("9223372036854775808")
                return
            }
            v = -v
        }
        var digits = 1
        var t = v
        while t >= 10 {
            t /= 10
            digits += 1
        }
        var i = count + digits - 1
        repeat {
            base[i] = UInt8(truncatingIfNeeded: v % 10) &+ 48
            v /= 10
            i -= 1
        } while v > 0
        count += digits
    }

    func decimalOrNull(_ value: Int?) {
        if let value { decimal(value) } else { ascii("null") }
    }

    func bool(_ value: Bool) {
        if value { ascii("true") } else { ascii("false") }
    }

    /// A JSON string: quotes, backslashes and control characters escaped; the rest, UTF-8 included, as it is.
    func jsonString(_ s: String) {
        if s.utf8.withContiguousStorageIfAvailable({ jsonEscaped($0) }) == nil {
            var copy = s
            copy.withUTF8 { jsonEscaped($0) }
        }
    }

    func jsonStringOrNull(_ s: String?) {
        if let s { jsonString(s) } else { ascii("null") }
    }

    private func jsonEscaped(_ utf8: UnsafeBufferPointer<UInt8>) {
        let n = utf8.count
        reserve(n + 2)
        base[count] = 34
        guard let start = utf8.baseAddress, n > 0 else {
            base[count + 1] = 34
            count += 2
            return
        }
        // The common case (names, hosts, paths): nothing to escape, found eight bytes at a time, one copy.
        let raw = UnsafeRawPointer(start)
        var i = 0
        while i + 8 <= n && !Self.needsEscape(raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) { i += 8 }
        while i < n && !Self.needsEscape(start[i]) { i += 1 }
        if i == n {
            (base + count + 1).update(from: start, count: n)
            base[count + 1 + n] = 34
            count += n + 2
            return
        }
        count += 1
        var runStart = 0
        i = 0
        while i < n {
            let b = start[i]
            if !Self.needsEscape(b) {
                i += 1
                continue
            }
            if i > runStart { bytes(UnsafeBufferPointer(start: start + runStart, count: i - runStart)) }
            reserve(6)
            base[count] = 92
            switch b {
            case 34, 92:
                base[count + 1] = b
                count += 2
            case 10:
                base[count + 1] = UInt8(ascii: "n")
                count += 2
            case 13:
                base[count + 1] = UInt8(ascii: "r")
                count += 2
            case 9:
                base[count + 1] = UInt8(ascii: "t")
                count += 2
            default:
                let hex: StaticString = "0123456789abcdef"
                base[count + 1] = UInt8(ascii: "u")
                base[count + 2] = 48
                base[count + 3] = 48
                base[count + 4] = hex.utf8Start[Int(b >> 4)]
                base[count + 5] = hex.utf8Start[Int(b & 15)]
                count += 6
            }
            i += 1
            runStart = i
        }
        if n > runStart { bytes(UnsafeBufferPointer(start: start + runStart, count: n - runStart)) }
        byte(34)
    }

    @inline(__always)
    static func needsEscape(_ b: UInt8) -> Bool { b < 0x20 || b == 34 || b == 92 }

    /// Whether any of eight bytes is below 0x20, a quote or a backslash (it may say yes for a byte after one
    /// that is, never no for one that is; bytes from 0x80 up, UTF-8 sequences, never need it).
    @inline(__always)
    static func needsEscape(_ x: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let high: UInt64 = 0x8080_8080_8080_8080
        let control = (x &- ones &* 0x20) & ~x & high
        let q = x ^ (ones &* 0x22)
        let bs = x ^ (ones &* 0x5C)
        let quote = (q &- ones) & ~q & high
        let backslash = (bs &- ones) & ~bs & high
        return (control | quote | backslash) != 0
    }

    /// "2027-03-02T14:05:09.123Z"
    func iso8601(millis: Int) {
        let second = millis >= 0 ? millis / 1000 : (millis - 999) / 1000
        if second != cachedSecond {
            let p = UTCTime.parts(second)
            func two(_ v: Int32, at i: Int) {
                cachedTime[i] = UInt8(truncatingIfNeeded: v / 10 % 10) &+ 48
                cachedTime[i + 1] = UInt8(truncatingIfNeeded: v % 10) &+ 48
            }
            let year = p.tm_year + 1900
            two(year / 100, at: 0)
            two(year % 100, at: 2)
            cachedTime[4] = UInt8(ascii: "-")
            two(p.tm_mon + 1, at: 5)
            cachedTime[7] = UInt8(ascii: "-")
            two(p.tm_mday, at: 8)
            cachedTime[10] = UInt8(ascii: "T")
            two(p.tm_hour, at: 11)
            cachedTime[13] = UInt8(ascii: ":")
            two(p.tm_min, at: 14)
            cachedTime[16] = UInt8(ascii: ":")
            two(p.tm_sec, at: 17)
            cachedSecond = second
        }
        let ms = millis - second * 1000
        reserve(24)
        (base + count).update(from: cachedTime, count: 19)
        base[count + 19] = UInt8(ascii: ".")
        base[count + 20] = UInt8(truncatingIfNeeded: ms / 100) &+ 48
        base[count + 21] = UInt8(truncatingIfNeeded: ms / 10 % 10) &+ 48
        base[count + 22] = UInt8(truncatingIfNeeded: ms % 10) &+ 48
        base[count + 23] = UInt8(ascii: "Z")
        count += 24
    }

    func appendJSON(_ r: AccessRecord) {
        ascii("{\"time\":\"")
        iso8601(millis: r.startEpochMillis)
        ascii("\",\"client\":")
        jsonString(r.client)
        ascii(",\"listener\":")
        jsonString(r.listener)
        ascii(",\"intercepted\":")
        bool(r.intercepted)
        if let tunnel = r.tunnel {
            ascii(",\"tunnel\":")
            jsonString(tunnel)
        }
        ascii(",\"method\":")
        jsonString(r.method)
        ascii(",\"scheme\":")
        jsonString(r.scheme)
        ascii(",\"host\":")
        jsonString(r.host)
        ascii(",\"port\":")
        decimal(r.port)
        ascii(",\"path\":")
        jsonString(r.path)
        ascii(",\"route\":")
        jsonString(r.route)
        ascii(",\"identity\":")
        jsonStringOrNull(r.identity)
        ascii(",\"cert_serial\":")
        jsonStringOrNull(r.certificateSerial)
        ascii(",\"status\":")
        decimal(r.status)
        ascii(",\"upstream_status\":")
        decimalOrNull(r.upstreamStatus)
        ascii(",\"bytes_in\":")
        decimal(r.bytesIn)
        ascii(",\"bytes_out\":")
        decimal(r.bytesOut)
        ascii(",\"duration_ms\":")
        decimal(r.durationMs)
        ascii(",\"connect_ms\":")
        decimalOrNull(r.connectMs)
        ascii(",\"tcp_connect_ms\":")
        decimalOrNull(r.tcpConnectMs)
        ascii(",\"tls_handshake_ms\":")
        decimalOrNull(r.tlsHandshakeMs)
        ascii(",\"ttfb_ms\":")
        decimalOrNull(r.ttfbMs)
        ascii(",\"reused\":")
        bool(r.reused)
        ascii(",\"tls_version\":")
        jsonStringOrNull(r.tlsVersion)
        ascii(",\"cipher\":")
        jsonStringOrNull(r.cipher)
        ascii(",\"proxy_status\":")
        jsonStringOrNull(r.proxyStatus)
        byte(UInt8(ascii: "}"))
    }

    func appendText(_ r: AccessRecord) {
        iso8601(millis: r.startEpochMillis)
        byte(32)
        raw(r.client)
        ascii(" \"")
        raw(r.method)
        byte(32)
        raw(r.scheme)
        ascii("://")
        raw(r.host)
        byte(UInt8(ascii: ":"))
        decimal(r.port)
        raw(r.path)
        ascii("\" ")
        decimal(r.status)
        ascii(" route=")
        jsonString(r.route)
        ascii(" identity=")
        rawOrDash(r.identity)
        ascii(" serial=")
        rawOrDash(r.certificateSerial)
        ascii(" upstream_status=")
        decimalOrDash(r.upstreamStatus)
        ascii(" in=")
        decimal(r.bytesIn)
        ascii(" out=")
        decimal(r.bytesOut)
        ascii(" ms=")
        decimal(r.durationMs)
        ascii(" connect_ms=")
        decimalOrDash(r.connectMs)
        ascii(" tls_ms=")
        decimalOrDash(r.tlsHandshakeMs)
        ascii(" ttfb_ms=")
        decimalOrDash(r.ttfbMs)
        ascii(" reused=")
        bool(r.reused)
        ascii(" tls=")
        rawOrDash(r.tlsVersion)
        if r.intercepted { ascii(" intercepted=true") }
        if let tunnel = r.tunnel {
            ascii(" tunnel=")
            raw(tunnel)
        }
        if let proxyStatus = r.proxyStatus {
            ascii(" proxy_status=")
            jsonString(proxyStatus)
        }
    }

    private func rawOrDash(_ s: String?) {
        if let s { raw(s) } else { byte(UInt8(ascii: "-")) }
    }

    private func decimalOrDash(_ v: Int?) {
        if let v { decimal(v) } else { byte(UInt8(ascii: "-")) }
    }
}

func formatUTC(_ epoch: Int) -> String { UTCTime.readable(epoch) }

func currentEpochMillis() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
}
