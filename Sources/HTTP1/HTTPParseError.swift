/// Why a request or response head (or body framing) was rejected. Each case maps to one status and one
/// sentence a caller can act on.
public enum HTTPParseError: Error, Equatable, Sendable, CustomStringConvertible {
    case headTooLarge(limit: Int)
    case bareCarriageReturn
    case bareLineFeed
    case invalidRequestLine
    case invalidStatusLine
    case unsupportedVersion(String)
    case invalidMethod
    case methodTooLong(limit: Int)
    case requestLineTooLong(limit: Int)
    case invalidTarget(String)
    case obsoleteLineFolding
    case headerWithoutColon
    case whitespaceBeforeColon
    case invalidFieldName
    case invalidFieldValue(name: String)
    case tooManyHeaders(limit: Int)
    case contentLengthAndTransferEncoding
    case invalidContentLength
    case conflictingContentLength
    case unsupportedTransferEncoding(String)
    case transferEncodingInHTTP10
    case transferEncodingNotEndingInChunked(String)
    case chunkedMoreThanOnce
    case missingHost
    case multipleHosts
    case invalidHost
    case invalidHostField
    case invalidChunkSize
    case chunkSizeTooLarge
    case invalidChunkExtension
    case invalidChunkTerminator
    case chunkLineTooLong
    /// A trailer field line broke the rule a header field line would have (obs-fold, a bare CR, a bad name...).
    indirect case inTrailerSection(HTTPParseError)
    /// The trailer section is larger than `max_header_bytes`, the limit of a head.
    case trailerSectionTooLarge(limit: Int)

    /// The registered transfer codings a Transfer-Encoding value names, e.g. ` (gzip, chunked)`; anything else
    /// in the value is left out, since a header value may carry a secret.
    static func registeredCodings(_ value: String) -> String {
        let registered: Set<String> = ["chunked", "compress", "deflate", "gzip", "identity", "trailers", "x-compress", "x-gzip", "br", "zstd"]
        let elements = value.split(separator: ",")
        let named = elements.map { element in
            String(element.prefix { $0 != ";" }.filter { $0 != " " && $0 != "\t" }).lowercased()
        }
        // Parameters are not shown (they could carry anything), but said: "chunked;x" is not chunked.
        let shown = zip(named, elements).map { name, element in
            let coding = registered.contains(name) ? name : "an unregistered coding"
            return element.contains(";") ? "\(coding) with parameters" : coding
        }
        return named.isEmpty ? "" : " (\(shown.joined(separator: ", ")))"
    }

    public var description: String {
        switch self {
        case .headTooLarge(let limit): return "request line and headers exceed \(limit) bytes"
        case .bareCarriageReturn: return "a bare CR (not followed by LF) in the head"
        case .bareLineFeed: return "a line ending in LF without CR"
        case .invalidRequestLine: return "malformed request line (expected: METHOD SP target SP HTTP/1.1)"
        case .invalidStatusLine: return "malformed status line"
        case .unsupportedVersion(let v): return "unsupported HTTP version \(v)"
        case .invalidMethod: return "invalid method token"
        case .methodTooLong(let limit): return "the method is longer than \(limit) bytes"
        case .requestLineTooLong(let limit): return "the request line (its target) exceeds \(limit) bytes"
        case .invalidTarget(let why): return "invalid request target: \(why)"
        case .obsoleteLineFolding: return "obsolete line folding (a header line starting with whitespace)"
        case .headerWithoutColon: return "a header line without a colon"
        case .whitespaceBeforeColon: return "whitespace between a header name and its colon"
        case .invalidFieldName: return "invalid character in a header name"
        case .invalidFieldValue(let name): return "invalid character in the value of header \(name)"
        case .tooManyHeaders(let limit): return "more than \(limit) header lines"
        case .contentLengthAndTransferEncoding: return "both Content-Length and Transfer-Encoding"
        case .invalidContentLength: return "Content-Length is not a non-negative decimal number"
        case .conflictingContentLength: return "conflicting Content-Length values"
        case .unsupportedTransferEncoding(let te): return "unsupported Transfer-Encoding\(Self.registeredCodings(te)) (only chunked is accepted)"
        case .transferEncodingInHTTP10: return "Transfer-Encoding in an HTTP/1.0 message"
        case .transferEncodingNotEndingInChunked(let te): return "Transfer-Encoding\(Self.registeredCodings(te)) does not end in chunked: the body's length cannot be known"
        case .chunkedMoreThanOnce: return "Transfer-Encoding names chunked more than once (RFC 9112 §6.1: it is applied once)"
        case .missingHost: return "HTTP/1.1 request without a Host header"
        case .multipleHosts: return "more than one Host header"
        case .invalidHost: return "invalid host name"
        case .invalidHostField: return "invalid Host header (expected host[:port]: one host, no path, no userinfo)"
        case .invalidChunkSize: return "invalid chunk size"
        case .chunkSizeTooLarge: return "chunk size too large"
        case .invalidChunkExtension: return "invalid chunk extension"
        case .invalidChunkTerminator: return "chunk data not followed by CRLF"
        case .chunkLineTooLong: return "chunk size line too long"
        case .inTrailerSection(let error):
            switch error {
            case .bareCarriageReturn: return "a bare CR (not followed by LF) in the trailer section"
            case .bareLineFeed: return "a line ending in LF without CR in the trailer section"
            case .tooManyHeaders(let limit): return "more than \(limit) trailer fields"
            default: return "\(error.description) in the trailer section"
            }
        case .trailerSectionTooLarge(let limit): return "the trailer section exceeds \(limit) bytes"
        }
    }
}
