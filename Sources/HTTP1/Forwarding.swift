/// The header rewriting a forward proxy does on each hop (RFC 9110 §7.6).
public enum Forwarding {
    /// Fields that describe one hop and never pass through. Transfer-Encoding and Content-Length are dropped too:
    /// the proxy writes the framing of each hop itself.
    static let hopByHop: [String] = [
        "connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
        "te", "trailer", "upgrade", "transfer-encoding", "content-length",
    ]

    /// Whether `name` is one of the fixed hop-by-hop fields (compared without allocating).
    @inline(__always)
    static func isHopByHop(_ name: String) -> Bool {
        let n = name.utf8.count
        guard n == 2 || (n >= 7 && n <= 19) else { return false }
        for candidate in hopByHop where candidate.utf8.count == n && name.equalsIgnoringASCIICase(candidate) {
            return true
        }
        return false
    }

    /// Which fields stop at this hop: the fixed hop-by-hop fields and every field that `Connection` names. The
    /// `Connection` values are read in place when a field asks, never split into an array.
    struct HopFilter {
        let headers: HTTPHeaders
        /// The number of `Connection` fields, and the value of the first (the usual case is none or one).
        let connectionCount: Int
        let connection: String

        init(_ headers: HTTPHeaders) {
            self.headers = headers
            var count = 0
            var first = ""
            for field in headers.fields where field.name.equalsIgnoringASCIICase("Connection") {
                if count == 0 { first = field.value }
                count += 1
            }
            connectionCount = count
            connection = first
        }

        @inline(__always)
        func drops(_ name: String) -> Bool {
            if isHopByHop(name) { return true }
            switch connectionCount {
            case 0: return false
            case 1: return listValue(connection, contains: name)
            default: return headers.containsListElement("Connection", name)
            }
        }
    }

    /// Removes hop-by-hop fields and every field that `Connection` names.
    public static func stripHopByHop(_ headers: inout HTTPHeaders) {
        let filter = HopFilter(headers)
        headers.removeAll { filter.drops($0.name) }
    }

    public static let viaToken = "1.1 mtls-proxy"

    /// Request fields a client may not make the proxy send upstream: anything addressed to a proxy (`Proxy-*`:
    /// credentials, status, connection options of the client-proxy hop).
    @inline(__always)
    static func isProxyField(_ name: String) -> Bool {
        name.utf8.count > 6 && name.utf8.prefix(6).elementsEqual("proxy-".utf8, by: { asciiLower($0) == $1 })
    }

    /// Bytes the fields of `headers` take on the wire at most (a Latin-1 value is never longer than its UTF-8),
    /// for reserving the output once.
    @inline(__always)
    static func wireSize(_ headers: HTTPHeaders) -> Int {
        var n = 0
        for field in headers.fields { n += field.name.utf8.count + field.value.utf8.count + 4 }
        return n
    }

    /// The request head sent upstream, in origin form with the given Host, with the body framing the proxy will write.
    /// `upgrade`, when set, is forwarded as `Upgrade` with `Connection: Upgrade` (RFC 9110 §7.8).
    /// Written in one pass into one buffer reserved at its final size; the received fields are not copied.
    public static func upstreamRequest(_ request: RequestHead, pathAndQuery: String, host: String, framing: BodyFraming,
                                       upgrade: String? = nil) -> [UInt8] {
        let filter = HopFilter(request.headers)
        var out: [UInt8] = []
        out.reserveCapacity(request.method.utf8.count + pathAndQuery.utf8.count + host.utf8.count + wireSize(request.headers)
                            + (upgrade?.utf8.count ?? 0) + viaToken.utf8.count + 128)
        appendASCII(request.method, to: &out)
        out.append(0x20)
        appendASCII(pathAndQuery, to: &out)
        appendStatic(" HTTP/1.1\r\nHost: ", to: &out)
        appendASCII(host, to: &out)
        appendCRLF(to: &out)
        for field in request.headers.fields {
            let name = field.name
            if name.equalsIgnoringASCIICase("Via") || name.equalsIgnoringASCIICase("Host") || isProxyField(name) || filter.drops(name) {
                continue
            }
            appendField(name, field.value, to: &out)
        }
        appendVia(request.headers, to: &out)
        if let upgrade {
            appendStatic("Connection: Upgrade\r\nUpgrade: ", to: &out)
            appendLatin1(upgrade, to: &out)
            appendCRLF(to: &out)
        }
        switch framing {
        case .contentLength(let n):
            appendStatic("Content-Length: ", to: &out)
            appendDecimal(n, to: &out)
            appendCRLF(to: &out)
        case .chunked: appendStatic("Transfer-Encoding: chunked\r\n", to: &out)
        case .none, .untilClose:
            // A body-less POST/PUT still states its length, as clients do.
            switch request.method {
            case "POST", "PUT", "PATCH": appendStatic("Content-Length: 0\r\n", to: &out)
            default: break
            }
        }
        appendCRLF(to: &out)
        return out
    }

    /// How the proxy frames a response body towards its client.
    public enum ClientFraming: Equatable, Sendable {
        case none
        case contentLength(UInt64)
        case chunked
        /// No framing: the body ends when the proxy closes the client connection.
        case close
    }

    public static func clientFraming(upstream: BodyFraming, clientVersion: HTTPVersion) -> ClientFraming {
        switch upstream {
        case .none: return .none
        case .contentLength(let n): return .contentLength(n)
        case .chunked: return clientVersion == .http11 ? .chunked : .close
        case .untilClose: return clientVersion == .http11 ? .chunked : .close
        }
    }

    /// The response head sent to the client. `locationRewrite`, when set, rewrites `Location` and
    /// `Content-Location` (sidecar listeners, and the forward path's optional https-to-http rewrite).
    /// Written in one pass into one buffer reserved at its final size; the received fields are not copied.
    public static func clientResponse(_ response: ResponseHead, framing: ClientFraming, requestMethod: String,
                                      keepAlive: Bool, clientVersion: HTTPVersion, upgrade: String? = nil,
                                      locationRewrite: LocationRewrite? = nil) -> [UInt8] {
        let headers = response.headers
        let filter = HopFilter(headers)
        var out: [UInt8] = []
        out.reserveCapacity(response.reason.utf8.count + wireSize(headers) + (upgrade?.utf8.count ?? 0) + viaToken.utf8.count + 128)
        // RFC 9110 §6.2: answer with the highest version the proxy conforms to, HTTP/1.1, whatever the client's.
        appendStatic("HTTP/1.1 ", to: &out)
        if response.status >= 0 { appendDecimal(UInt64(response.status), to: &out) } else { appendASCII(String(response.status), to: &out) }
        out.append(0x20)
        appendLatin1(response.reason, to: &out)
        appendCRLF(to: &out)
        var upstreamContentLength: String?
        for field in headers.fields {
            let name = field.name
            if upstreamContentLength == nil, name.equalsIgnoringASCIICase("Content-Length") { upstreamContentLength = field.value }
            if name.equalsIgnoringASCIICase("Via") || filter.drops(name) { continue }
            if let locationRewrite, LocationRewrite.applies(to: name), let rewritten = locationRewrite.rewrite(field.value) {
                appendField(name, rewritten, to: &out)
            } else {
                appendField(name, field.value, to: &out)
            }
        }
        appendVia(headers, to: &out)
        if let upgrade, response.status == 101 {
            appendStatic("Connection: Upgrade\r\nUpgrade: ", to: &out)
            appendLatin1(upgrade, to: &out)
            appendStatic("\r\n\r\n", to: &out)
            return out
        }
        switch framing {
        case .contentLength(let n):
            appendStatic("Content-Length: ", to: &out)
            appendDecimal(n, to: &out)
            appendCRLF(to: &out)
        case .chunked: appendStatic("Transfer-Encoding: chunked\r\n", to: &out)
        case .none:
            // HEAD and 304 answers keep the length the upstream announced for the representation.
            if let cl = upstreamContentLength, requestMethod == "HEAD" || response.status == 304 {
                appendStatic("Content-Length: ", to: &out)
                appendLatin1(cl, to: &out)
                appendCRLF(to: &out)
            } else if response.status >= 200 && response.status != 204 && response.status != 304 {
                appendStatic("Content-Length: 0\r\n", to: &out)
            }
        case .close: break
        }
        if response.status >= 200 {
            if !keepAlive || framing == .close {
                appendStatic("Connection: close\r\n", to: &out)
            } else if clientVersion == .http10 {
                appendStatic("Connection: keep-alive\r\n", to: &out)
            }
        }
        appendCRLF(to: &out)
        return out
    }

    @inline(__always)
    static func appendField(_ name: String, _ value: String, to out: inout [UInt8]) {
        appendASCII(name, to: &out)
        out.append(0x3A)
        out.append(0x20)
        appendLatin1(value, to: &out)
        appendCRLF(to: &out)
    }

    /// `Via`: the values received (in order), then this hop.
    static func appendVia(_ original: HTTPHeaders, to out: inout [UInt8]) {
        appendStatic("Via: ", to: &out)
        for field in original.fields where field.name.equalsIgnoringASCIICase("Via") {
            appendLatin1(field.value, to: &out)
            appendStatic(", ", to: &out)
        }
        appendStatic("1.1 mtls-proxy\r\n", to: &out)
    }
}

/// Appends a string literal's bytes (its storage is static and contiguous).
@inline(__always)
func appendStatic(_ literal: StaticString, to out: inout [UInt8]) {
    out.append(contentsOf: UnsafeBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
}

@inline(__always)
func appendCRLF(to out: inout [UInt8]) {
    out.append(0x0D)
    out.append(0x0A)
}

/// Appends `value` in decimal, without making a String.
@inline(__always)
func appendDecimal(_ value: UInt64, to out: inout [UInt8]) {
    var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                 UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    var v = value
    var count = 0
    withUnsafeMutableBytes(of: &digits) { buffer in
        repeat {
            buffer[19 - count] = UInt8(v % 10) + 0x30
            v /= 10
            count += 1
        } while v > 0
        out.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[(20 - count)...]))
    }
}
