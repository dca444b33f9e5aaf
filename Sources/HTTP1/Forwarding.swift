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

    /// Removes hop-by-hop fields and every field that `Connection` names.
    public static func stripHopByHop(_ headers: inout HTTPHeaders) {
        let named = headers.contains("Connection") ? headers.listElements("Connection") : []
        headers.removeAll { field in
            isHopByHop(field.name) || named.contains { field.name.equalsIgnoringASCIICase($0) }
        }
    }

    public static let viaToken = "1.1 mtls-proxy"

    /// The `Upgrade` protocols passed on to the upstream, or nil when none is. HTTP/2 (`h2c`, `h2`) is never
    /// passed on: after it, one connection carries any number of requests for any path, and none of them would
    /// be routed (a path-scoped deny or identity route would be skipped: "h2c smuggling").
    public static func forwardableUpgrade(_ value: String) -> String? {
        let kept = value.split(separator: ",").map { $0.trimmingHTTPWhitespace() }.filter { token in
            let name = token.split(separator: "/", maxSplits: 1).first.map(String.init) ?? ""
            return !token.isEmpty && !name.equalsIgnoringASCIICase("h2c") && !name.equalsIgnoringASCIICase("h2")
        }
        return kept.isEmpty ? nil : kept.joined(separator: ", ")
    }

    /// Request fields a client may not make the proxy send upstream: anything addressed to a proxy (`Proxy-*`:
    /// credentials, status, connection options of the client-proxy hop).
    @inline(__always)
    static func isProxyField(_ name: String) -> Bool {
        name.utf8.count > 6 && name.utf8.prefix(6).elementsEqual("proxy-".utf8, by: { asciiLower($0) == $1 })
    }

    /// Fields that some frameworks (Symfony, Zend/Laminas, IIS URL Rewrite) read as the request path in place of
    /// the request line: forwarded, they would let a client name a path that no route decided.
    static let pathOverrideFields = ["x-original-url", "x-rewrite-url", "x-original-uri"]

    @inline(__always)
    static func isPathOverrideField(_ name: String) -> Bool {
        name.utf8.count >= 13 && name.utf8.count <= 14 && pathOverrideFields.contains { name.equalsIgnoringASCIICase($0) }
    }

    /// The request head sent upstream, in origin form with the given Host, with the body framing the proxy will write.
    /// `upgrade`, when set, is forwarded as `Upgrade` with `Connection: Upgrade` (RFC 9110 §7.8).
    public static func upstreamRequest(_ request: RequestHead, pathAndQuery: String, host: String, framing: BodyFraming,
                                       upgrade: String? = nil) -> [UInt8] {
        var headers = request.headers
        stripHopByHop(&headers)
        headers.removeAll { $0.name.equalsIgnoringASCIICase("Host") || isProxyField($0.name) || isPathOverrideField($0.name) }
        var out: [UInt8] = []
        out.reserveCapacity(512)
        out.append(contentsOf: request.method.utf8)
        out.append(0x20)
        out.append(contentsOf: pathAndQuery.utf8)
        out.append(contentsOf: " HTTP/1.1\r\nHost: ".utf8)
        out.append(contentsOf: host.utf8)
        out.append(contentsOf: "\r\n".utf8)
        appendFields(headers, to: &out)
        appendVia(request.headers, to: &out)
        if let upgrade {
            out.append(contentsOf: "Connection: Upgrade\r\nUpgrade: ".utf8)
            appendLatin1(upgrade, to: &out)
            out.append(contentsOf: "\r\n".utf8)
        }
        switch framing {
        case .contentLength(let n): out.append(contentsOf: "Content-Length: \(n)\r\n".utf8)
        case .chunked: out.append(contentsOf: "Transfer-Encoding: chunked\r\n".utf8)
        case .none, .untilClose:
            // A body-less POST/PUT still states its length, as clients do.
            if ["POST", "PUT", "PATCH"].contains(request.method) { out.append(contentsOf: "Content-Length: 0\r\n".utf8) }
        }
        out.append(contentsOf: "\r\n".utf8)
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
    public static func clientResponse(_ response: ResponseHead, framing: ClientFraming, requestMethod: String,
                                      keepAlive: Bool, clientVersion: HTTPVersion, upgrade: String? = nil,
                                      locationRewrite: LocationRewrite? = nil) -> [UInt8] {
        var headers = response.headers
        let upstreamContentLength = headers.first("Content-Length")
        stripHopByHop(&headers)
        var out: [UInt8] = []
        out.reserveCapacity(512)
        // RFC 9110 §6.2: answer with the highest version the proxy conforms to, HTTP/1.1, whatever the client's.
        out.append(contentsOf: "HTTP/1.1 \(response.status) ".utf8)
        appendLatin1(response.reason, to: &out)
        out.append(contentsOf: "\r\n".utf8)
        appendFields(headers, to: &out, locationRewrite: locationRewrite)
        appendVia(response.headers, to: &out)
        if let upgrade, response.status == 101 {
            out.append(contentsOf: "Connection: Upgrade\r\nUpgrade: ".utf8)
            appendLatin1(upgrade, to: &out)
            out.append(contentsOf: "\r\n\r\n".utf8)
            return out
        }
        switch framing {
        case .contentLength(let n): out.append(contentsOf: "Content-Length: \(n)\r\n".utf8)
        case .chunked: out.append(contentsOf: "Transfer-Encoding: chunked\r\n".utf8)
        case .none:
            // HEAD and 304 answers keep the length the upstream announced for the representation.
            if let cl = upstreamContentLength, requestMethod == "HEAD" || response.status == 304 {
                out.append(contentsOf: "Content-Length: ".utf8)
                out.append(contentsOf: cl.utf8)
                out.append(contentsOf: "\r\n".utf8)
            } else if response.status >= 200 && response.status != 204 && response.status != 304 {
                out.append(contentsOf: "Content-Length: 0\r\n".utf8)
            }
        case .close: break
        }
        if response.status >= 200 {
            if !keepAlive || framing == .close {
                out.append(contentsOf: "Connection: close\r\n".utf8)
            } else if clientVersion == .http10 {
                out.append(contentsOf: "Connection: keep-alive\r\n".utf8)
            }
        }
        out.append(contentsOf: "\r\n".utf8)
        return out
    }

    static func appendFields(_ headers: HTTPHeaders, to out: inout [UInt8], locationRewrite: LocationRewrite? = nil) {
        for field in headers where !field.name.equalsIgnoringASCIICase("Via") {
            appendASCII(field.name, to: &out)
            out.append(0x3A)
            out.append(0x20)
            if let locationRewrite, LocationRewrite.applies(to: field.name), let rewritten = locationRewrite.rewrite(field.value) {
                appendLatin1(rewritten, to: &out)
            } else {
                appendLatin1(field.value, to: &out)
            }
            out.append(0x0D)
            out.append(0x0A)
        }
    }

    static func appendVia(_ original: HTTPHeaders, to out: inout [UInt8]) {
        let previous = original.values("Via")
        out.append(contentsOf: "Via: ".utf8)
        for v in previous {
            appendLatin1(v, to: &out)
            out.append(contentsOf: ", ".utf8)
        }
        out.append(contentsOf: viaToken.utf8)
        out.append(contentsOf: "\r\n".utf8)
    }
}
