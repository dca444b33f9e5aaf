import HTTP1

/// One field of an HTTP/2 header list: a lowercase name (pseudo-fields start with `:`) and its value.
public struct H2Field: Sendable, Equatable, CustomStringConvertible {
    public var name: String
    public var value: String

    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }

    public var description: String { "\(name): \(value)" }
}

/// Why an HTTP/2 response head cannot be turned into an HTTP/1.1 one.
public enum H2TranslationError: Error, Equatable, Sendable, CustomStringConvertible {
    case missingStatus
    case invalidStatus(String)
    case unexpectedPseudoField(String)
    case invalidContentLength(String)

    public var description: String {
        switch self {
        case .missingStatus: return "the HTTP/2 response has no :status"
        case .invalidStatus(let s): return "the HTTP/2 response's :status is not three digits (\(s.count) bytes)"
        case .unexpectedPseudoField(let name): return "the HTTP/2 response has the pseudo-field \(name)"
        case .invalidContentLength: return "the HTTP/2 response has an invalid content-length"
        }
    }
}

/// RFC 9113 §8: an HTTP/1.1 message as the proxy forwards it, translated to an HTTP/2 header list, and an
/// HTTP/2 response translated back into an HTTP/1.1 head with a framing the client side can carry. Pure: no
/// nghttp2, no sockets.
public enum MessageTranslation {
    /// Fields that are specific to one HTTP/1.1 connection and MUST NOT appear in HTTP/2 (RFC 9113 §8.2.2).
    /// `te` is handled apart (only `trailers` may pass); `host` becomes `:authority`.
    static let connectionSpecific: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
    ]

    /// The header list of a request (RFC 9113 §8.3.1), as Strings (`requestHeaderList` is what the data path uses).
    public static func requestFields(_ head: RequestHead, scheme: String = "https", authority: String? = nil) -> [H2Field] {
        var list = H2HeaderList()
        requestHeaderList(head, scheme: scheme, authority: authority, into: &list)
        return list.fields
    }

    /// The header list of a request (RFC 9113 §8.3.1): `:method`, `:scheme`, `:authority` (from `Host`), `:path`
    /// (the origin-form target, or `*` for a server-wide OPTIONS), then the fields, names lowercased, without the
    /// connection-specific ones, without those `Connection` names, and with `TE` only as `trailers`.
    /// `Content-Length` passes (nghttp2 checks the DATA against it); a chunked body has none. Built from the
    /// head's bytes in place into `list` (emptied first): no String, no allocation once `list` is large enough.
    public static func requestHeaderList(_ head: RequestHead, scheme: String = "https", authority: String? = nil,
                                         into list: inout H2HeaderList) {
        list.removeAll()
        var method = head.method
        method.withUTF8 { list.append(":method", value: $0) }
        var scheme = scheme
        scheme.withUTF8 { list.append(":scheme", value: $0) }
        var hasConnection = false
        if var authority {
            authority.withUTF8 { list.append(":authority", value: $0) }
            head.headers.forEachField { name, _ in
                hasConnection = H2Bytes.equalsLowercase(name, "connection")
                return !hasConnection
            }
        } else {
            var host: UnsafeBufferPointer<UInt8>?
            head.headers.forEachField { name, value in
                if host == nil, H2Bytes.equalsLowercase(name, "host") {
                    list.append(":authority", value: value)
                    host = value
                }
                if H2Bytes.equalsLowercase(name, "connection") { hasConnection = true }
                return host == nil || !hasConnection
            }
            if host == nil { list.append(":authority", value: UnsafeBufferPointer(start: nil, count: 0)) }
        }
        head.withTargetBytes { list.append(":path", value: $0) }
        var teTrailers = false
        head.headers.forEachField { name, value in
            // TE before the names Connection lists: an HTTP/1.1 sender of TE names it there (RFC 9110 §10.1.4).
            if H2Bytes.equalsLowercase(name, "te") {
                if listContains(value, "trailers") { teTrailers = true }
                return true
            }
            if H2Bytes.equalsLowercase(name, "host") || isConnectionSpecific(name, ignoringCase: true)
                || (hasConnection && namedByConnection(name, in: head.headers)) { return true }
            list.append(lowercasing: name, value: value)
            return true
        }
        if teTrailers {
            let trailers: StaticString = "trailers"
            list.append("te", value: UnsafeBufferPointer(start: trailers.utf8Start, count: trailers.utf8CodeUnitCount))
        }
    }

    /// Whether `name` is one of `connectionSpecific`; HTTP/2 names are lower case already (`ignoringCase` for
    /// HTTP/1.1 ones).
    @inline(__always)
    static func isConnectionSpecific(_ name: UnsafeBufferPointer<UInt8>, ignoringCase: Bool) -> Bool {
        // By length first: most names are none of these.
        switch name.count {
        case 7: return ignoringCase ? H2Bytes.equalsLowercase(name, "upgrade") : H2Bytes.equals(name, "upgrade")
        case 10: return ignoringCase ? (H2Bytes.equalsLowercase(name, "connection") || H2Bytes.equalsLowercase(name, "keep-alive"))
                                     : (H2Bytes.equals(name, "connection") || H2Bytes.equals(name, "keep-alive"))
        case 16: return ignoringCase ? H2Bytes.equalsLowercase(name, "proxy-connection") : H2Bytes.equals(name, "proxy-connection")
        case 17: return ignoringCase ? H2Bytes.equalsLowercase(name, "transfer-encoding") : H2Bytes.equals(name, "transfer-encoding")
        default: return false
        }
    }

    /// Whether some `Connection` field of `headers` lists `name` (ASCII case-insensitive).
    static func namedByConnection(_ name: UnsafeBufferPointer<UInt8>, in headers: HTTPHeaders) -> Bool {
        var found = false
        headers.forEachField { n, value in
            guard H2Bytes.equalsLowercase(n, "connection") else { return true }
            H2Bytes.forEachListElement(value) { element in
                found = H2Bytes.equalIgnoringCase(element, name)
                return !found
            }
            return !found
        }
        return found
    }

    /// The fields of a trailer section, HTTP/1.1 to HTTP/2: names lowercased, connection-specific ones and
    /// pseudo-fields left out.
    public static func trailerFields(_ fields: [HTTPField]) -> [H2Field] {
        fields.compactMap { field in
            let name = field.name.lowercased()
            if name.hasPrefix(":") || name == "host" || name == "te" || connectionSpecific.contains(name) { return nil }
            return H2Field(name, field.value)
        }
    }

    /// How the translated response's body is delimited for the HTTP/1.1 side.
    public enum ResponseFraming: Sendable, Equatable {
        /// No body: 1xx, 204, 304, an answer to HEAD, or a response that ended with its head.
        case none
        /// The upstream named the length; DATA is checked against it (nghttp2 resets the stream otherwise).
        case contentLength(UInt64)
        /// No length: the body goes on as chunks and ends with the stream (trailers go in the last chunk).
        case chunked
    }

    /// An HTTP/2 response head as an HTTP/1.1 one: `:status` and a reason phrase, the fields in order,
    /// and the framing the HTTP/1.1 side will see. `endStream` is whether the HEADERS frame ended the stream.
    /// (For tests and callers outside the data path: `writeResponseHead` writes the same head as bytes.)
    public static func responseHead(_ fields: [H2Field], requestMethod: String, endStream: Bool) throws -> (ResponseHead, ResponseFraming) {
        var bytes: [UInt8] = []
        let framing = try writeResponseHead(H2HeaderList(fields), requestMethod: requestMethod, endStream: endStream, into: &bytes)
        let head = try HeadParser.parseResponse(bytes, limits: HeadLimits(maxHeadBytes: bytes.count + 1, maxHeaderCount: fields.count + 2))
        return (head, framing)
    }

    /// Writes an HTTP/2 response head as an HTTP/1.1 one into `out`, from the header list's bytes: the status line
    /// with the standard reason phrase, the fields in order (connection-specific ones dropped, a repeated
    /// `content-length` once), and what the framing needs (`content-length: 0` for a head that ended the stream,
    /// `transfer-encoding: chunked` for a body without a length). Returns the framing the HTTP/1.1 side will see.
    /// A missing or malformed `:status`, another pseudo-field, or a malformed or conflicting `content-length`
    /// throws, with nothing written.
    public static func writeResponseHead(_ list: H2HeaderList, requestMethod: String, endStream: Bool,
                                         into out: inout [UInt8]) throws -> ResponseFraming {
        var status: Int?
        var contentLength: UInt64?
        try list.forEach { name, value in
            if name.first == 0x3A {
                guard H2Bytes.equals(name, ":status") else {
                    throw H2TranslationError.unexpectedPseudoField(String(decoding: name, as: UTF8.self))
                }
                guard value.count == 3, value.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                      value[0] != 0x30 else {
                    throw H2TranslationError.invalidStatus(latin1(value))
                }
                status = Int(value[0] &- 0x30) * 100 + Int(value[1] &- 0x30) * 10 + Int(value[2] &- 0x30)
                return true
            }
            if H2Bytes.equals(name, "content-length") {
                guard let length = decimal(value) else { throw H2TranslationError.invalidContentLength(latin1(value)) }
                if let previous = contentLength, previous != length { throw H2TranslationError.invalidContentLength(latin1(value)) }
                contentLength = length
            }
            return true
        }
        guard let status else { throw H2TranslationError.missingStatus }
        out.append(contentsOf: "HTTP/1.1 ".utf8)
        list.forEach { name, value in
            guard H2Bytes.equals(name, ":status") else { return true }
            out.append(contentsOf: value)
            return false
        }
        out.append(0x20)
        out.append(contentsOf: reasonPhrase(status).utf8)
        out.append(contentsOf: "\r\n".utf8)
        var lengthWritten = false
        list.forEach { name, value in
            if name.first == 0x3A || isConnectionSpecific(name, ignoringCase: false) { return true }
            if H2Bytes.equals(name, "content-length") {
                if lengthWritten { return true }
                lengthWritten = true
            }
            out.append(contentsOf: name)
            out.append(0x3A)
            out.append(0x20)
            out.append(contentsOf: value)
            out.append(0x0D)
            out.append(0x0A)
            return true
        }
        let framing: ResponseFraming
        if requestMethod == "HEAD" || status < 200 || status == 204 || status == 304 {
            framing = .none
        } else if let contentLength {
            framing = contentLength == 0 ? .none : .contentLength(contentLength)
        } else if endStream {
            out.append(contentsOf: "content-length: 0\r\n".utf8)
            framing = .none
        } else {
            out.append(contentsOf: "transfer-encoding: chunked\r\n".utf8)
            framing = .chunked
        }
        out.append(0x0D)
        out.append(0x0A)
        return framing
    }

    /// A `content-length` value: 1 to 18 digits (below 10^18), nothing else.
    static func decimal(_ value: UnsafeBufferPointer<UInt8>) -> UInt64? {
        guard !value.isEmpty, value.count <= 18 else { return nil }
        var n: UInt64 = 0
        for c in value {
            guard c >= 0x30 && c <= 0x39 else { return nil }
            n = n * 10 + UInt64(c - 0x30)
        }
        return n
    }

    static func latin1(_ bytes: UnsafeBufferPointer<UInt8>) -> String {
        String(String.UnicodeScalarView(bytes.lazy.map { Unicode.Scalar($0) }))
    }

    /// HTTP/2 has no reason phrase (RFC 9113 §8.3.2): the HTTP/1.1 head gets the standard one (RFC 9110 §15).
    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 101: return "Switching Protocols"
        case 102: return "Processing"
        case 103: return "Early Hints"
        case 201: return "Created"
        case 202: return "Accepted"
        case 203: return "Non-Authoritative Information"
        case 204: return "No Content"
        case 205: return "Reset Content"
        case 206: return "Partial Content"
        case 300: return "Multiple Choices"
        case 301: return "Moved Permanently"
        case 302: return "Found"
        case 303: return "See Other"
        case 304: return "Not Modified"
        case 307: return "Temporary Redirect"
        case 308: return "Permanent Redirect"
        case 401: return "Unauthorized"
        case 409: return "Conflict"
        case 410: return "Gone"
        case 412: return "Precondition Failed"
        case 415: return "Unsupported Media Type"
        case 416: return "Range Not Satisfiable"
        case 422: return "Unprocessable Content"
        case 425: return "Too Early"
        case 428: return "Precondition Required"
        case 429: return "Too Many Requests"
        default:
            let known = ProxyErrorResponse.reasonPhrase(status)
            return known == "Error" ? (status < 400 ? "Status" : "Error") : known
        }
    }

    /// Whether a comma-separated list value has `token` (lower case; compared ignoring case), ignoring parameters.
    static func listContains(_ value: UnsafeBufferPointer<UInt8>, _ token: StaticString) -> Bool {
        var found = false
        H2Bytes.forEachListElement(value) { element in
            found = H2Bytes.equalsLowercase(H2Bytes.bare(element), token)
            return !found
        }
        return found
    }

    /// Whether a comma-separated list value has `token` (case-insensitive), ignoring parameters.
    static func listContains(_ value: String, _ token: String) -> Bool {
        value.split(separator: ",").contains { element in
            let bare = element.split(separator: ";").first.map(String.init) ?? ""
            return bare.trimmingCharacters(in: " \t").lowercased() == token
        }
    }

    /// The HTTP/1.1 bytes of a translated response: the head, then body pieces and the end as the framing says.
    public enum HTTP1Bytes {
        public static func head(_ head: ResponseHead, into out: inout [UInt8]) {
            out.append(contentsOf: "HTTP/1.1 \(head.status) \(head.reason)\r\n".utf8)
            for field in head.headers.fields {
                out.append(contentsOf: field.name.utf8)
                out.append(contentsOf: ": ".utf8)
                appendLatin1(field.value, to: &out)
                out.append(contentsOf: "\r\n".utf8)
            }
            out.append(contentsOf: "\r\n".utf8)
        }

        /// A chunk's size line (the data follows, then `chunkEnd`).
        public static func chunkStart(_ size: Int, into out: inout [UInt8]) {
            out.append(contentsOf: String(size, radix: 16).utf8)
            out.append(contentsOf: "\r\n".utf8)
        }

        public static let chunkEnd: [UInt8] = Array("\r\n".utf8)

        /// The last chunk with the trailer section.
        public static func lastChunk(trailers: [H2Field], into out: inout [UInt8]) {
            out.append(contentsOf: "0\r\n".utf8)
            for field in trailers where !field.name.hasPrefix(":") && !connectionSpecific.contains(field.name) {
                out.append(contentsOf: field.name.utf8)
                out.append(contentsOf: ": ".utf8)
                appendLatin1(field.value, to: &out)
                out.append(contentsOf: "\r\n".utf8)
            }
            out.append(contentsOf: "\r\n".utf8)
        }

        static func appendLatin1(_ s: String, to out: inout [UInt8]) {
            for scalar in s.unicodeScalars { out.append(UInt8(truncatingIfNeeded: scalar.value)) }
        }
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        let blanks = Set(set.unicodeScalars)
        var scalars = Substring(self).unicodeScalars[...]
        while let first = scalars.first, blanks.contains(first) { scalars.removeFirst() }
        while let last = scalars.last, blanks.contains(last) { scalars.removeLast() }
        return String(String.UnicodeScalarView(scalars))
    }
}
