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

    func json() -> String {
        var s = "{\"time\":\(jsonString(UTCTime.iso8601(millis: startEpochMillis))),\"client\":\(jsonString(client)),\"listener\":\(jsonString(listener))"
        s += ",\"intercepted\":\(intercepted),\"method\":\(jsonString(method)),\"scheme\":\(jsonString(scheme)),\"host\":\(jsonString(host)),\"port\":\(port)"
        s += ",\"path\":\(jsonString(path)),\"route\":\(jsonString(route))"
        s += ",\"identity\":\(identity.map(jsonString) ?? "null")"
        s += ",\"cert_serial\":\(certificateSerial.map(jsonString) ?? "null")"
        s += ",\"status\":\(status),\"upstream_status\":\(upstreamStatus.map(String.init) ?? "null")"
        s += ",\"bytes_in\":\(bytesIn),\"bytes_out\":\(bytesOut),\"duration_ms\":\(durationMs)"
        s += ",\"connect_ms\":\(connectMs.map(String.init) ?? "null"),\"tcp_connect_ms\":\(tcpConnectMs.map(String.init) ?? "null")"
        s += ",\"tls_handshake_ms\":\(tlsHandshakeMs.map(String.init) ?? "null"),\"ttfb_ms\":\(ttfbMs.map(String.init) ?? "null")"
        s += ",\"reused\":\(reused)"
        s += ",\"tls_version\":\(tlsVersion.map(jsonString) ?? "null"),\"cipher\":\(cipher.map(jsonString) ?? "null")"
        s += ",\"proxy_status\":\(proxyStatus.map(jsonString) ?? "null")}"
        return s
    }

    func text() -> String {
        var s = "\(UTCTime.iso8601(millis: startEpochMillis)) \(client) \"\(method) \(scheme)://\(host):\(port)\(path)\" \(status)"
        s += " route=\(jsonString(route)) identity=\(identity ?? "-") serial=\(certificateSerial ?? "-")"
        s += " upstream_status=\(upstreamStatus.map(String.init) ?? "-") in=\(bytesIn) out=\(bytesOut) ms=\(durationMs)"
        s += " connect_ms=\(connectMs.map(String.init) ?? "-") tls_ms=\(tlsHandshakeMs.map(String.init) ?? "-") ttfb_ms=\(ttfbMs.map(String.init) ?? "-") reused=\(reused)"
        s += " tls=\(tlsVersion ?? "-")"
        if intercepted { s += " intercepted=true" }
        if let proxyStatus { s += " proxy_status=\(jsonString(proxyStatus))" }
        return s
    }
}

/// Where access records go: standard output, a file (opened for appending), or nowhere. Each record is one
/// write(2), so lines from several workers never interleave.
final class AccessLog: @unchecked Sendable {
    let settings: LogSettings
    private let fd: Int32
    private let ownsFD: Bool

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
    }

    deinit { if ownsFD { close(fd) } }

    func write(_ record: AccessRecord) {
        guard fd >= 0 else { return }
        writeLine((settings.format == .json ? record.json() : record.text()) + "\n", fd: fd)
    }
}

func writeLine(_ line: String, fd: Int32) {
    var bytes = Array(line.utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if n <= 0 {
            if n < 0 && errno == EINTR { continue }
            return
        }
        offset += n
    }
}

/// UTC times as logs, errors and the command line show them, from one gmtime_r.
public enum UTCTime {
    static func parts(_ epoch: Int) -> tm {
        var t = time_t(epoch)
        var result = tm()
        gmtime_r(&t, &result)
        return result
    }

    static func pad(_ v: Int32, _ width: Int = 2) -> String {
        let s = String(v)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }

    /// "2027-03-02 14:05:09 UTC", or without the seconds.
    public static func readable(_ epoch: Int, seconds: Bool = true) -> String {
        let p = parts(epoch)
        let time = "\(pad(p.tm_hour)):\(pad(p.tm_min))" + (seconds ? ":\(pad(p.tm_sec))" : "")
        return "\(p.tm_year + 1900)-\(pad(p.tm_mon + 1))-\(pad(p.tm_mday)) \(time) UTC"
    }

    /// "2027-03-02T14:05:09.123Z", for the access log.
    static func iso8601(millis: Int) -> String {
        let p = parts(millis / 1000)
        return "\(p.tm_year + 1900)-\(pad(p.tm_mon + 1))-\(pad(p.tm_mday))T\(pad(p.tm_hour)):\(pad(p.tm_min)):\(pad(p.tm_sec)).\(pad(Int32(millis % 1000), 3))Z"
    }
}

func formatUTC(_ epoch: Int) -> String { UTCTime.readable(epoch) }

func jsonString(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

func currentEpochMillis() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
}
