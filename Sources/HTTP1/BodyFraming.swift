/// How the body of a message is delimited (RFC 9112 §6).
public enum BodyFraming: Sendable, Equatable {
    case none
    case contentLength(UInt64)
    case chunked
    /// Response only: the body runs until the upstream closes the connection.
    case untilClose

    /// The framing of a request body. Strict: Content-Length together with Transfer-Encoding, conflicting or
    /// malformed lengths, and any coding other than a lone `chunked` are rejected.
    public static func forRequest(_ head: RequestHead) throws -> BodyFraming {
        let te = head.headers.listElements("Transfer-Encoding")
        let hasTE = head.headers.contains("Transfer-Encoding")
        let cl = head.headers.values("Content-Length")
        if hasTE {
            if !cl.isEmpty { throw HTTPParseError.contentLengthAndTransferEncoding }
            if head.version == .http10 { throw HTTPParseError.transferEncodingInHTTP10 }
            guard te.count == 1, te[0].equalsIgnoringASCIICase("chunked") else {
                throw HTTPParseError.unsupportedTransferEncoding(head.headers.values("Transfer-Encoding").joined(separator: ", "))
            }
            return .chunked
        }
        if !cl.isEmpty {
            let length = try contentLength(cl)
            return length == 0 ? .none : .contentLength(length)
        }
        return .none
    }

    /// The framing of a response body, given the request method it answers (RFC 9112 §6.3).
    public static func forResponse(_ head: ResponseHead, requestMethod: String) throws -> BodyFraming {
        if requestMethod == "HEAD" || (100..<200).contains(head.status) || head.status == 204 || head.status == 304 {
            return .none
        }
        let hasTE = head.headers.contains("Transfer-Encoding")
        let cl = head.headers.values("Content-Length")
        if hasTE {
            if !cl.isEmpty { throw HTTPParseError.contentLengthAndTransferEncoding }
            let te = head.headers.listElements("Transfer-Encoding")
            if head.version == .http11, let last = te.last, last.equalsIgnoringASCIICase("chunked") {
                guard te.count == 1 else {
                    throw HTTPParseError.unsupportedTransferEncoding(te.joined(separator: ", "))
                }
                return .chunked
            }
            return .untilClose
        }
        if !cl.isEmpty {
            let length = try contentLength(cl)
            return length == 0 ? .none : .contentLength(length)
        }
        return .untilClose
    }

    /// One value out of one or more Content-Length fields; identical repeats are folded, anything else rejected.
    static func contentLength(_ values: [String]) throws -> UInt64 {
        var result: UInt64?
        for value in values {
            for element in value.split(separator: ",", omittingEmptySubsequences: false) {
                let trimmed = element.trimmingHTTPWhitespace()
                guard !trimmed.isEmpty, trimmed.utf8.count <= 18, trimmed.utf8.allSatisfy(isDigit),
                      let n = UInt64(trimmed) else { throw HTTPParseError.invalidContentLength }
                if let r = result, r != n { throw HTTPParseError.conflictingContentLength }
                result = n
            }
        }
        guard let length = result else { throw HTTPParseError.invalidContentLength }
        return length
    }
}
