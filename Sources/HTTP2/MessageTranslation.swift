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

    /// The header list of a request (RFC 9113 §8.3.1): `:method`, `:scheme`, `:authority` (from `Host`), `:path`
    /// (the origin-form target, or `*` for a server-wide OPTIONS), then the fields, names lowercased, without the
    /// connection-specific ones, without those `Connection` names, and with `TE` only as `trailers`.
    /// `Content-Length` passes (nghttp2 checks the DATA against it); a chunked body has none.
    public static func requestFields(_ head: RequestHead, scheme: String = "https", authority: String? = nil) -> [H2Field] {
        var result: [H2Field] = []
        result.reserveCapacity(head.headers.count + 4)
        let host = authority ?? head.headers.first("Host") ?? ""
        result.append(H2Field(":method", head.method))
        result.append(H2Field(":scheme", scheme))
        result.append(H2Field(":authority", host))
        result.append(H2Field(":path", head.target))
        let named = Set(head.headers.listElements("Connection").map { $0.lowercased() })
        var teTrailers = false
        for field in head.headers.fields {
            let name = field.name.lowercased()
            // TE before the names Connection lists: an HTTP/1.1 sender of TE names it there (RFC 9110 §10.1.4).
            if name == "te" {
                if listContains(field.value, "trailers") { teTrailers = true }
                continue
            }
            if name == "host" || connectionSpecific.contains(name) || named.contains(name) { continue }
            result.append(H2Field(name, field.value))
        }
        if teTrailers { result.append(H2Field("te", "trailers")) }
        return result
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
    public static func responseHead(_ fields: [H2Field], requestMethod: String, endStream: Bool) throws -> (ResponseHead, ResponseFraming) {
        var status: Int?
        var headers = HTTPHeaders()
        var contentLength: UInt64?
        for field in fields {
            if field.name.hasPrefix(":") {
                guard field.name == ":status" else { throw H2TranslationError.unexpectedPseudoField(field.name) }
                guard field.value.utf8.count == 3, field.value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                      let value = Int(field.value), value >= 100 else {
                    throw H2TranslationError.invalidStatus(field.value)
                }
                status = value
                continue
            }
            if connectionSpecific.contains(field.name) { continue }
            if field.name == "content-length" {
                guard let value = UInt64(field.value), field.value.utf8.count <= 18 else {
                    throw H2TranslationError.invalidContentLength(field.value)
                }
                if let previous = contentLength, previous != value { throw H2TranslationError.invalidContentLength(field.value) }
                if contentLength != nil { continue }
                contentLength = value
            }
            headers.add(field.name, field.value)
        }
        guard let status else { throw H2TranslationError.missingStatus }
        var framing: ResponseFraming
        if requestMethod == "HEAD" || status < 200 || status == 204 || status == 304 {
            framing = .none
        } else if let contentLength {
            framing = contentLength == 0 ? .none : .contentLength(contentLength)
        } else if endStream {
            headers.add("content-length", "0")
            framing = .none
        } else {
            headers.add("transfer-encoding", "chunked")
            framing = .chunked
        }
        let head = ResponseHead(version: .http11, status: status, reason: reasonPhrase(status), headers: headers)
        return (head, framing)
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
