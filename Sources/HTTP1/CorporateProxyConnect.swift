/// The `CONNECT host:port` exchange with a corporate HTTP proxy, as bytes: the request the proxy sends, and a
/// reading of the reply head. Pure; the upstream connection and the tunnel dialler carry it out on a socket.
public enum CorporateProxyConnect {
    /// Reply heads longer than this are refused (a proxy's CONNECT reply is a few hundred bytes).
    public static let maxReplyBytes = 16 * 1024

    /// `CONNECT host:port HTTP/1.1`, `Host`, and `Proxy-Authorization` when given. IPv6 hosts in brackets.
    public static func request(host: String, port: Int, authorization: String?) -> [UInt8] {
        let authority = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        var text = "CONNECT \(authority) HTTP/1.1\r\nHost: \(authority)\r\n"
        if let authorization { text += "Proxy-Authorization: \(authorization)\r\n" }
        text += "\r\n"
        return Array(text.utf8)
    }

    public enum Reply: Equatable, Sendable {
        /// The head has not ended yet: read more.
        case incomplete
        /// 2xx: the tunnel is open after `headLength` bytes; `extra` bytes followed the head.
        case established(headLength: Int, extra: Int)
        /// Any other status, with its reason phrase (printable ASCII, at most 64 characters).
        case refused(status: Int, reason: String)
        /// Not an HTTP reply head, or one too long.
        case malformed(String)
    }

    /// Reads the reply head at the start of `bytes`.
    public static func parseReply(_ bytes: UnsafeRawBufferPointer) -> Reply {
        let end = headEnd(bytes)
        let statusLine = bytes.prefix { $0 != 0x0D && $0 != 0x0A }
        // The status line can be judged as soon as it is complete, even before the head ends.
        if statusLine.count < bytes.count || end != nil {
            let line = Array(statusLine)
            guard line.count >= 12, line.starts(with: Array("HTTP/1.".utf8)), line[7] == 0x30 || line[7] == 0x31, line[8] == 0x20,
                  line[9...11].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), line.count == 12 || line[12] == 0x20 else {
                return .malformed("the reply is not an HTTP/1.x status line")
            }
            let status = Int(line[9] - 0x30) * 100 + Int(line[10] - 0x30) * 10 + Int(line[11] - 0x30)
            let reason = String(decoding: line.dropFirst(13).prefix(64).map { $0 >= 0x20 && $0 < 0x7F ? $0 : 0x3F }, as: UTF8.self)
            if !(200...299).contains(status) { return .refused(status: status, reason: reason) }
            guard let end else {
                return bytes.count > maxReplyBytes ? .malformed("the reply head is longer than \(maxReplyBytes) bytes") : .incomplete
            }
            return .established(headLength: end, extra: bytes.count - end)
        }
        return bytes.count > maxReplyBytes ? .malformed("the reply head is longer than \(maxReplyBytes) bytes") : .incomplete
    }

    public static func parseReply(_ bytes: [UInt8]) -> Reply {
        bytes.withUnsafeBytes { parseReply($0) }
    }

    /// The length of the head through its blank line (`\r\n\r\n`, or bare `\n\n`), nil if not there yet.
    static func headEnd(_ bytes: UnsafeRawBufferPointer) -> Int? {
        var i = 0
        while i < bytes.count {
            if bytes[i] == 0x0A {
                if i + 1 < bytes.count, bytes[i + 1] == 0x0A { return i + 2 }
                if i + 2 < bytes.count, bytes[i + 1] == 0x0D, bytes[i + 2] == 0x0A { return i + 3 }
            }
            i += 1
        }
        return nil
    }
}

extension ProxyErrorResponse {
    /// The `reason-phrase` this proxy would use for `status`, for messages about another hop's reply.
    public static func statusText(_ status: Int, reason: String) -> String {
        reason.isEmpty ? "\(status) \(reasonPhrase(status))" : "\(status) \(reason)"
    }
}
