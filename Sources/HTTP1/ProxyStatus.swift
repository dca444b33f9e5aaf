/// Error types of the Proxy-Status field (RFC 9209 §2.3), the ones this proxy produces.
public enum ProxyErrorType: String, Sendable {
    case httpRequestError = "http_request_error"
    case httpRequestDenied = "http_request_denied"
    case dnsError = "dns_error"
    case destinationNotFound = "destination_not_found"
    case destinationUnavailable = "destination_unavailable"
    case destinationIPProhibited = "destination_ip_prohibited"
    case connectionLimitReached = "connection_limit_reached"
    case connectionRefused = "connection_refused"
    case connectionTimeout = "connection_timeout"
    case connectionTerminated = "connection_terminated"
    case connectionReadTimeout = "connection_read_timeout"
    case tlsProtocolError = "tls_protocol_error"
    case tlsCertificateError = "tls_certificate_error"
    case tlsAlertReceived = "tls_alert_received"
    case httpResponseIncomplete = "http_response_incomplete"
    case httpResponseHeaderSectionSize = "http_response_header_section_size"
    case httpProtocolError = "http_protocol_error"
    case httpUpgradeFailed = "http_upgrade_failed"
    case proxyInternalError = "proxy_internal_error"
    case proxyConfigurationError = "proxy_configuration_error"
}

/// A response the proxy makes itself when it cannot serve a request: a status, a Proxy-Status field naming the
/// error, and a short plain-text body telling the caller what happened and what to do.
public struct ProxyErrorResponse: Sendable, Equatable {
    public var status: Int
    public var errorType: ProxyErrorType
    /// For Proxy-Status `details`: one line, what went wrong.
    public var details: String
    /// For the body: what to do about it (may be empty).
    public var advice: String

    /// RFC 9209 `next-hop`: the hop the failure is about when it is not the service itself (a corporate proxy).
    public var nextHop: String?
    /// RFC 9209 `received-status`: the status that hop answered with.
    public var receivedStatus: Int?

    public init(status: Int, errorType: ProxyErrorType, details: String, advice: String = "", nextHop: String? = nil,
                receivedStatus: Int? = nil) {
        self.status = status
        self.errorType = errorType
        self.details = details
        self.advice = advice
        self.nextHop = nextHop
        self.receivedStatus = receivedStatus
    }

    public static let proxyName = "mtls-proxy"

    public var proxyStatusValue: String {
        var value = "\(Self.proxyName); error=\(errorType.rawValue)"
        if let nextHop { value += "; next-hop=\(Self.sfString(nextHop))" }
        if let receivedStatus { value += "; received-status=\(receivedStatus)" }
        return value + "; details=\(Self.sfString(details))"
    }

    public var body: String {
        var text = "mtls-proxy: \(status) \(Self.reasonPhrase(status)): \(details)\n"
        if !advice.isEmpty { text += advice + "\n" }
        return text
    }

    public func serialize(version: HTTPVersion = .http11, closeConnection: Bool, extraHeaders: [(String, String)] = []) -> [UInt8] {
        let bodyBytes = Array(body.utf8)
        var head = "\(version.text) \(status) \(Self.reasonPhrase(status))\r\n"
        head += "Content-Type: text/plain; charset=utf-8\r\n"
        head += "Content-Length: \(bodyBytes.count)\r\n"
        head += "Proxy-Status: \(proxyStatusValue)\r\n"
        head += "Cache-Control: no-store\r\n"
        for (name, value) in extraHeaders { head += "\(name): \(value)\r\n" }
        if closeConnection { head += "Connection: close\r\n" }
        head += "\r\n"
        return Array(head.utf8) + bodyBytes
    }

    /// A Structured Field string (RFC 8941 §3.3.3): printable ASCII, with `"` and `\` escaped.
    public static func sfString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case " "..."~": out.unicodeScalars.append(scalar)
            default: out += "?"
            }
        }
        return out + "\""
    }

    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 400: return "Bad Request"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 407: return "Proxy Authentication Required"
        case 408: return "Request Timeout"
        case 411: return "Length Required"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 417: return "Expectation Failed"
        case 421: return "Misdirected Request"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Error"
        }
    }

    /// The response for a request head or body the proxy could not parse.
    public static func badRequest(_ error: HTTPParseError) -> ProxyErrorResponse {
        switch error {
        case .headTooLarge:
            return ProxyErrorResponse(status: 431, errorType: .httpRequestError, details: error.description,
                                      advice: "Send fewer or smaller headers, or raise [proxy] max_header_bytes.")
        case .trailerSectionTooLarge:
            return ProxyErrorResponse(status: 431, errorType: .httpRequestError, details: error.description,
                                      advice: "Send fewer or smaller trailer fields, or raise [proxy] max_header_bytes.")
        case .requestLineTooLong:
            return ProxyErrorResponse(status: 414, errorType: .httpRequestError, details: error.description,
                                      advice: "Send a shorter URL (a long query belongs in a request body), or raise [proxy] max_header_bytes.")
        case .unsupportedVersion:
            return ProxyErrorResponse(status: 505, errorType: .httpRequestError, details: error.description,
                                      advice: "The proxy speaks HTTP/1.1 and HTTP/1.0 to its clients.")
        case .unsupportedTransferEncoding:
            return ProxyErrorResponse(status: 501, errorType: .httpRequestError, details: error.description)
        default:
            return ProxyErrorResponse(status: 400, errorType: .httpRequestError, details: error.description)
        }
    }
}
