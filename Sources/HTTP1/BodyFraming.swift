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
        let (hasTE, hasCL) = framingFields(head.headers)
        if hasTE {
            if hasCL { throw HTTPParseError.contentLengthAndTransferEncoding }
            if head.version == .http10 { throw HTTPParseError.transferEncodingInHTTP10 }
            let te = head.headers.listElementCount("Transfer-Encoding", lastEquals: "chunked")
            // RFC 9112 §6.3: without chunked last, the length of the body cannot be known (400); chunked applied
            // more than once is an error of the request too (§6.1: a sender never does it; 400); a coding the
            // proxy does not decode before it is not implemented (501).
            guard te.lastMatches else {
                throw HTTPParseError.transferEncodingNotEndingInChunked(head.headers.values("Transfer-Encoding").joined(separator: ", "))
            }
            guard te.matches == 1 else { throw HTTPParseError.chunkedMoreThanOnce }
            guard te.count == 1 else {
                throw HTTPParseError.unsupportedTransferEncoding(head.headers.values("Transfer-Encoding").joined(separator: ", "))
            }
            return .chunked
        }
        if hasCL {
            let length = try contentLength(head.headers)
            return length == 0 ? .none : .contentLength(length)
        }
        return .none
    }

    /// The framing of a response body, given the request method it answers (RFC 9112 §6.3).
    public static func forResponse(_ head: ResponseHead, requestMethod: String) throws -> BodyFraming {
        if requestMethod == "HEAD" || (100..<200).contains(head.status) || head.status == 204 || head.status == 304 {
            return .none
        }
        let (hasTE, hasCL) = framingFields(head.headers)
        if hasTE {
            if hasCL { throw HTTPParseError.contentLengthAndTransferEncoding }
            let te = head.headers.listElementCount("Transfer-Encoding", lastEquals: "chunked")
            if head.version == .http11, te.lastMatches {
                guard te.count == 1 else {
                    throw HTTPParseError.unsupportedTransferEncoding(head.headers.listElements("Transfer-Encoding").joined(separator: ", "))
                }
                return .chunked
            }
            return .untilClose
        }
        if hasCL {
            let length = try contentLength(head.headers)
            return length == 0 ? .none : .contentLength(length)
        }
        return .untilClose
    }

    /// Whether the head has Transfer-Encoding and Content-Length fields, found in one pass over the names.
    @inline(__always)
    static func framingFields(_ headers: HTTPHeaders) -> (transferEncoding: Bool, contentLength: Bool) {
        var te = false, cl = false
        headers.forEachField { name, _ in
            if name.count == 17, equalsLowercase(name, "transfer-encoding") { te = true }
            if name.count == 14, equalsLowercase(name, "content-length") { cl = true }
            return true
        }
        return (te, cl)
    }

    /// One value out of one or more Content-Length fields; identical repeats are folded, anything else rejected.
    static func contentLength(_ values: [String]) throws -> UInt64 {
        var result: UInt64?
        for value in values { try foldContentLength(value, into: &result) }
        guard let length = result else { throw HTTPParseError.invalidContentLength }
        return length
    }

    /// The same over every Content-Length field of `headers`, read in place.
    static func contentLength(_ headers: HTTPHeaders) throws -> UInt64 {
        var result: UInt64?
        try headers.forEachValue("Content-Length") { value in
            try foldContentLength(value, into: &result)
            return true
        }
        guard let length = result else { throw HTTPParseError.invalidContentLength }
        return length
    }

    /// Every comma-separated element of `value` (empty ones included, which are errors) must be 1 to 18 digits
    /// and equal to `result`, which it sets.
    private static func foldContentLength(_ value: String, into result: inout UInt64?) throws {
        var value = value
        try value.withUTF8 { try foldContentLength($0, into: &result) }
    }

    private static func foldContentLength(_ bytes: UnsafeBufferPointer<UInt8>, into result: inout UInt64?) throws {
        let n = bytes.count
        var i = 0
        while true {
            var end = i
            while end < n && bytes[end] != 0x2C { end += 1 }
            var s = i, e = end
            while s < e && (bytes[s] == 0x20 || bytes[s] == 0x09) { s += 1 }
            while e > s && (bytes[e - 1] == 0x20 || bytes[e - 1] == 0x09) { e -= 1 }
            guard e > s, e - s <= 18 else { throw HTTPParseError.invalidContentLength }
            var v: UInt64 = 0
            for k in s..<e {
                guard isDigit(bytes[k]) else { throw HTTPParseError.invalidContentLength }
                v = v * 10 + UInt64(bytes[k] - 0x30)
            }
            if let r = result, r != v { throw HTTPParseError.conflictingContentLength }
            result = v
            if end >= n { break }
            i = end + 1
        }
    }
}
