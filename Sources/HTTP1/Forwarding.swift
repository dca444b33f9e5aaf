/// The header rewriting a forward proxy does on each hop (RFC 9110 §7.6).
public enum Forwarding {
    /// Fields that describe one hop and never pass through. Transfer-Encoding and Content-Length are dropped too:
    /// the proxy writes the framing of each hop itself. (`Trailer` passes: it names the trailer section, which
    /// passes too; RFC 9110 §6.6.2.)
    static let hopByHop: [String] = [
        "connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
        "te", "upgrade", "transfer-encoding", "content-length",
    ]

    /// What a field name means to forwarding.
    enum FieldRole: Equatable {
        case other
        /// One of the fixed hop-by-hop fields other than these two:
        case hopByHop
        case connection
        /// Hop-by-hop too (the proxy frames each hop itself); HEAD and 304 answers keep its value.
        case contentLength
        case via
        case host
    }

    /// Whether a TE field value lists `trailers` (the one value HTTP/2 lets through).
    public static func teListsTrailers(_ headers: HTTPHeaders) -> Bool {
        headers.containsListElement("TE", "trailers")
    }

    /// The role of `name`, found with one switch on its length and at most two comparisons.
    @inline(__always)
    static func role(_ name: String) -> FieldRole {
        var name = name
        return name.withUTF8 { role($0) }
    }

    @inline(__always)
    static func role(_ b: UnsafeBufferPointer<UInt8>) -> FieldRole {
        switch b.count {
            case 2: return equalsLowercase(b, "te") ? .hopByHop : .other
            case 3: return equalsLowercase(b, "via") ? .via : .other
            case 4: return equalsLowercase(b, "host") ? .host : .other
            case 7: return equalsLowercase(b, "upgrade") ? .hopByHop : .other
            case 10:
                if equalsLowercase(b, "connection") { return .connection }
                return equalsLowercase(b, "keep-alive") ? .hopByHop : .other
            case 14: return equalsLowercase(b, "content-length") ? .contentLength : .other
            case 16: return equalsLowercase(b, "proxy-connection") ? .hopByHop : .other
            case 17: return equalsLowercase(b, "transfer-encoding") ? .hopByHop : .other
            case 18: return equalsLowercase(b, "proxy-authenticate") ? .hopByHop : .other
            case 19: return equalsLowercase(b, "proxy-authorization") ? .hopByHop : .other
            default: return .other
        }
    }

    /// Whether `name` is one of the fixed hop-by-hop fields (compared without allocating).
    @inline(__always)
    static func isHopByHop(_ name: String) -> Bool {
        isHopByHop(role(name))
    }

    @inline(__always)
    static func isHopByHop(_ role: FieldRole) -> Bool {
        role == .hopByHop || role == .connection || role == .contentLength
    }

    /// Which fields stop at this hop: the fixed hop-by-hop fields and every field that `Connection` names. The
    /// `Connection` values are read in place when a field asks, never split into an array.
    struct HopFilter {
        let view: FieldView
        /// The number of `Connection` fields, and the value of the first (the usual case is none or one).
        let connectionCount: Int
        let connection: UnsafeBufferPointer<UInt8>
        /// When every `Connection` element is `close` or `keep-alive` (the usual case), which of the two are
        /// named: a field is then named only if it is called so, found by its length first. nil otherwise.
        let plainOptions: (close: Bool, keepAlive: Bool)?

        @inline(__always)
        init(_ view: FieldView) {
            self.view = view
            var count = 0
            var first = UnsafeBufferPointer<UInt8>(start: nil, count: 0)
            var close = false, keepAlive = false, plain = true
            for s in view.spans where s.nameCount == 10 {
                let name = view.name(s)
                guard equalsLowercase(name, "connection") else { continue }
                if count == 0 { first = view.value(s) }
                count += 1
                forEachListElement(view.value(s)) { element in
                    if equalsLowercase(element, "close") {
                        close = true
                    } else if equalsLowercase(element, "keep-alive") {
                        keepAlive = true
                    } else {
                        plain = false
                    }
                    return plain
                }
            }
            connectionCount = count
            connection = first
            plainOptions = plain ? (close, keepAlive) : nil
        }

        @inline(__always)
        func drops(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
            isHopByHop(role(name)) || namedByConnection(name)
        }

        /// Whether a `Connection` field lists `name`.
        @inline(__always)
        func namedByConnection(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
            if connectionCount == 0 { return false }
            if let plainOptions {
                switch name.count {
                case 5: return plainOptions.close && equalsLowercase(name, "close")
                case 10: return plainOptions.keepAlive && equalsLowercase(name, "keep-alive")
                default: return false
                }
            }
            if connectionCount == 1 { return listValue(connection, contains: name) }
            for s in view.spans where s.nameCount == 10 && equalsLowercase(view.name(s), "connection") {
                if listValue(view.value(s), contains: name) { return true }
            }
            return false
        }
    }

    /// Removes hop-by-hop fields and every field that `Connection` names.
    public static func stripHopByHop(_ headers: inout HTTPHeaders) {
        let drop = headers.withFields { view in
            let filter = HopFilter(view)
            return view.spans.map { filter.drops(view.name($0)) }
        }
        headers.removeSpans(flagged: drop)
    }

    public static let viaToken = "1.1 mtls-proxy"
    static let trailersToken: StaticString = "trailers"

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
    static func isProxyField(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        name.count > 6 && asciiLower(name[0]) == 0x70 && asciiLower(name[1]) == 0x72 && asciiLower(name[2]) == 0x6F
            && asciiLower(name[3]) == 0x78 && asciiLower(name[4]) == 0x79 && name[5] == 0x2D
    }

    /// Bytes the fields of `headers` take on the wire at most (a Latin-1 value is never longer than its UTF-8),
    /// for reserving the output once.
    @inline(__always)
    static func wireSize(_ headers: HTTPHeaders) -> Int {
        headers.storage.count + 4 * headers.spans.count
    }

    /// Fields that some frameworks (Symfony, Zend/Laminas, IIS URL Rewrite) read as the request path in place of
    /// the request line: forwarded, they would let a client name a path that no route decided.
    static let pathOverrideFields = ["x-original-url", "x-rewrite-url", "x-original-uri"]

    @inline(__always)
    static func isPathOverrideField(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        name.count >= 13 && name.count <= 14 && pathOverrideFields.contains { bytesEqualIgnoringASCIICase(name, $0) }
    }

    /// The request head sent upstream, in origin form with the given Host, with the body framing the proxy will write.
    /// `upgrade`, when set, is forwarded as `Upgrade` with `Connection: Upgrade` (RFC 9110 §7.8).
    public static func upstreamRequest(_ request: RequestHead, pathAndQuery: String, host: String, framing: BodyFraming,
                                       upgrade: String? = nil) -> [UInt8] {
        var out: [UInt8] = []
        upstreamRequest(request, pathAndQuery: pathAndQuery, host: host, framing: framing, upgrade: upgrade, into: &out)
        return out
    }

    /// The same written into `out` (emptied first, its capacity kept: a buffer reused per connection does not
    /// allocate). Written in one pass; the received names and values are copied from the head's bytes in place.
    public static func upstreamRequest(_ request: RequestHead, pathAndQuery: String, host: String, framing: BodyFraming,
                                       upgrade: String? = nil, into out: inout [UInt8]) {
        upstreamRequest(request, pathAndQuery: pathAndQuery, host: host, bracketed: false, port: nil, framing: framing,
                        upgrade: upgrade, into: &out)
    }

    /// The same with the Host value given as its parts, written in place (no String made for it): `host`, in
    /// brackets when `bracketed` (an IPv6 literal), then `:port` when `port` is set (not the scheme's default).
    /// `teTrailers`: `TE: trailers` may pass (the proxy carries trailers to this client; over HTTP/2, TE passes with
    /// that value only, RFC 9113 §8.2.2, and gRPC servers require it): when the client's TE lists `trailers` (found
    /// in the same pass over the fields), it is written with the `TE` connection option an HTTP/1.1 server expects
    /// beside it (RFC 9110 §10.1.4); any other TE value stops here as before.
    public static func upstreamRequest(_ request: RequestHead, pathAndQuery: String, host: String, bracketed: Bool, port: Int?,
                                       framing: BodyFraming, upgrade: String? = nil, teTrailers: Bool = false, into out: inout [UInt8]) {
        out.removeAllZeroing()
        out.reserveCapacity(request.method.utf8.count + pathAndQuery.utf8.count + host.utf8.count + wireSize(request.headers)
                            + (upgrade?.utf8.count ?? 0) + viaToken.utf8.count + 128)
        appendASCII(request.method, to: &out)
        out.append(0x20)
        appendASCII(pathAndQuery, to: &out)
        appendStatic(" HTTP/1.1\r\nHost: ", to: &out)
        if bracketed { out.append(0x5B) }
        appendASCII(host, to: &out)
        if bracketed { out.append(0x5D) }
        if let port {
            out.append(0x3A)
            appendDecimal(UInt64(clamping: port), to: &out)
        }
        appendCRLF(to: &out)
        var listsTrailers = false
        request.headers.withFields { view in
            let filter = HopFilter(view)
            var run = LineRun()
            var vias = 0
            for s in view.spans {
                // Dropped: hop-by-hop fields, Via (written below with this hop), Host (written above), Proxy-*
                // fields, and fields some frameworks read as the request path (X-Original-URL and the like).
                let name = view.name(s)
                let role = role(name)
                if role == .via { vias += 1 }
                if teTrailers, !listsTrailers, role == .hopByHop, name.count == 2 {
                    listsTrailers = listValue(view.value(s), contains: UnsafeBufferPointer(start: trailersToken.utf8Start, count: 8))
                }
                guard role == .other, !isProxyField(name), !isPathOverrideField(name), !filter.namedByConnection(name) else { continue }
                run.append(view, s, to: &out)
            }
            run.flush(view, to: &out)
            appendVia(view, count: vias, to: &out)
        }
        if let upgrade {
            appendStatic("Connection: Upgrade\r\nUpgrade: ", to: &out)
            appendLatin1(upgrade, to: &out)
            appendCRLF(to: &out)
        } else if listsTrailers {
            appendStatic("Connection: TE\r\nTE: trailers\r\n", to: &out)
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
        var out: [UInt8] = []
        clientResponse(response, framing: framing, requestMethod: requestMethod, keepAlive: keepAlive, clientVersion: clientVersion,
                       upgrade: upgrade, locationRewrite: locationRewrite, into: &out)
        return out
    }

    /// The same written into `out` (emptied first, its capacity kept). Written in one pass; the received names
    /// and values are copied from the head's bytes in place.
    public static func clientResponse(_ response: ResponseHead, framing: ClientFraming, requestMethod: String,
                                      keepAlive: Bool, clientVersion: HTTPVersion, upgrade: String? = nil,
                                      locationRewrite: LocationRewrite? = nil, into out: inout [UInt8]) {
        let headers = response.headers
        out.removeAllZeroing()
        out.reserveCapacity(wireSize(headers) + (upgrade?.utf8.count ?? 0) + viaToken.utf8.count + 128)
        // RFC 9110 §6.2: answer with the highest version the proxy conforms to, HTTP/1.1, whatever the client's.
        appendStatic("HTTP/1.1 ", to: &out)
        if response.status >= 0 { appendDecimal(UInt64(response.status), to: &out) } else { appendASCII(String(response.status), to: &out) }
        out.append(0x20)
        response.withReasonBytes { out.append(contentsOf: $0) }
        appendCRLF(to: &out)
        var contentLengthSpan: HTTPHeaders.FieldSpan?
        headers.withFields { view in
            let filter = HopFilter(view)
            var run = LineRun()
            var vias = 0
            for s in view.spans {
                let name = view.name(s)
                let role = role(name)
                if role == .contentLength && contentLengthSpan == nil { contentLengthSpan = s }
                if role == .via { vias += 1 }
                // Dropped: hop-by-hop fields and Via (written below with this hop).
                guard role == .other || role == .host, !filter.namedByConnection(name) else { continue }
                if let locationRewrite, LocationRewrite.applies(to: name),
                   let rewritten = locationRewrite.rewrite(latin1(view.value(s))) {
                    run.flush(view, to: &out)
                    out.append(contentsOf: name)
                    out.append(0x3A)
                    out.append(0x20)
                    appendLatin1(rewritten, to: &out)
                    appendCRLF(to: &out)
                } else {
                    run.append(view, s, to: &out)
                }
            }
            run.flush(view, to: &out)
            appendVia(view, count: vias, to: &out)
        }
        if let upgrade, response.status == 101 {
            appendStatic("Connection: Upgrade\r\nUpgrade: ", to: &out)
            appendLatin1(upgrade, to: &out)
            appendStatic("\r\n\r\n", to: &out)
            return
        }
        switch framing {
        case .contentLength(let n):
            appendStatic("Content-Length: ", to: &out)
            appendDecimal(n, to: &out)
            appendCRLF(to: &out)
        case .chunked: appendStatic("Transfer-Encoding: chunked\r\n", to: &out)
        case .none:
            // HEAD and 304 answers keep the length the upstream announced for the representation.
            if let cl = contentLengthSpan, requestMethod == "HEAD" || response.status == 304 {
                appendStatic("Content-Length: ", to: &out)
                headers.withFields { out.append(contentsOf: $0.value(cl)) }
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
    }

    /// A received field as it is: its name's bytes, then its value's (Latin-1) bytes.
    @inline(__always)
    static func appendField(_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>, to out: inout [UInt8]) {
        out.append(contentsOf: name)
        out.append(0x3A)
        out.append(0x20)
        out.append(contentsOf: value)
        appendCRLF(to: &out)
    }

    /// Consecutive forwarded lines that lie back to back in the received bytes, in the form the proxy writes
    /// (`isWrittenAsForwarded`): copied as one span. Any other field is written from its name and value.
    struct LineRun {
        var start = -1
        var end = -1

        @inline(__always)
        mutating func append(_ view: FieldView, _ s: HTTPHeaders.FieldSpan, to out: inout [UInt8]) {
            if view.isWrittenAsForwarded(s) {
                let lineStart = Int(s.nameStart), lineEnd = Int(s.valueEnd) + 2
                if lineStart == end {
                    end = lineEnd
                } else {
                    flush(view, to: &out)
                    start = lineStart
                    end = lineEnd
                }
                return
            }
            flush(view, to: &out)
            appendField(view.name(s), view.value(s), to: &out)
        }

        @inline(__always)
        mutating func flush(_ view: FieldView, to out: inout [UInt8]) {
            if start >= 0 && end > start { out.append(contentsOf: UnsafeBufferPointer(rebasing: view.bytes[start..<end])) }
            start = -1
            end = -1
        }
    }

    /// `Via`: the values received (in order), then this hop. `count` is how many `Via` fields there are.
    static func appendVia(_ view: FieldView, count: Int, to out: inout [UInt8]) {
        if count == 0 {
            appendStatic("Via: 1.1 mtls-proxy\r\n", to: &out)
            return
        }
        appendStatic("Via: ", to: &out)
        do {
            for s in view.spans where s.nameCount == 3 && equalsLowercase(view.name(s), "via") {
                out.append(contentsOf: view.value(s))
                appendStatic(", ", to: &out)
            }
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
