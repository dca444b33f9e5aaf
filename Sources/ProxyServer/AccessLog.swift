#if canImport(Glibc)
import Glibc
#endif

/// One record per request, written as a JSON line to standard output with a single write(2), so lines from
/// several workers never interleave. Never holds the query string or header values.
struct AccessRecord {
    var time: Int = 0
    var client: String = ""
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
    var connectMs: Int?
    var reused: Bool = false
    var tlsVersion: String?
    var cipher: String?
    var proxyStatus: String?

    func json() -> String {
        var s = "{\"time\":\(time),\"client\":\(jsonString(client)),\"method\":\(jsonString(method))"
        s += ",\"scheme\":\(jsonString(scheme)),\"host\":\(jsonString(host)),\"port\":\(port),\"path\":\(jsonString(path))"
        s += ",\"route\":\(jsonString(route))"
        s += ",\"identity\":\(identity.map(jsonString) ?? "null")"
        s += ",\"cert_serial\":\(certificateSerial.map(jsonString) ?? "null")"
        s += ",\"status\":\(status),\"upstream_status\":\(upstreamStatus.map(String.init) ?? "null")"
        s += ",\"bytes_in\":\(bytesIn),\"bytes_out\":\(bytesOut),\"duration_ms\":\(durationMs)"
        s += ",\"connect_ms\":\(connectMs.map(String.init) ?? "null"),\"reused\":\(reused)"
        s += ",\"tls_version\":\(tlsVersion.map(jsonString) ?? "null"),\"cipher\":\(cipher.map(jsonString) ?? "null")"
        s += ",\"proxy_status\":\(proxyStatus.map(jsonString) ?? "null")}"
        return s
    }
}

enum AccessLog {
    static func write(_ record: AccessRecord) {
        var line = record.json()
        line += "\n"
        writeLine(line, fd: 1)
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
