/// Which fields a trailer section may carry through the proxy (RFC 9110 §6.5.1). A recipient may discard trailer
/// fields selectively (RFC 9112 §7.1.2); the proxy drops those whose meaning is needed before the content, or that
/// describe or address one hop, so that no recipient that merges trailers into the head (some do) is told about
/// framing, routing, credentials or controls after the fact:
/// - framing and the connection: Content-Length, Transfer-Encoding, Trailer, Connection, Keep-Alive,
///   Proxy-Connection, TE, Upgrade; and every `Proxy-*` field (credentials and status of the client-proxy hop);
/// - routing: Host, and the fields some frameworks read as the request path (X-Original-URL, X-Rewrite-URL,
///   X-Original-URI), which no head carries upstream either;
/// - authentication and state: Authorization, WWW-Authenticate, Cookie, Set-Cookie;
/// - request modifiers and response controls: Expect, Max-Forwards, Range, If-Match, If-None-Match,
///   If-Modified-Since, If-Unmodified-Since, If-Range, Cache-Control, Pragma, Expires, Age, Vary, Location,
///   Retry-After;
/// - the content's format: Content-Type, Content-Encoding, Content-Range.
/// Everything else (checksums such as Content-Digest, gRPC's grpc-status and grpc-message, Server-Timing, ...)
/// passes as received. The names are compared without allocating.
public enum TrailerFields {
    @inline(__always)
    public static func isDropped(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        if Forwarding.isHopByHop(Forwarding.role(name)) || Forwarding.isProxyField(name) || Forwarding.isPathOverrideField(name) {
            return true
        }
        switch name.count {
        case 3: return equalsLowercase(name, "age")
        case 4: return equalsLowercase(name, "host") || equalsLowercase(name, "vary")
        case 5: return equalsLowercase(name, "range")
        case 6: return equalsLowercase(name, "cookie") || equalsLowercase(name, "expect") || equalsLowercase(name, "pragma")
        case 7: return equalsLowercase(name, "expires") || equalsLowercase(name, "trailer")
        case 8: return equalsLowercase(name, "if-match") || equalsLowercase(name, "if-range") || equalsLowercase(name, "location")
        case 10: return equalsLowercase(name, "set-cookie")
        case 11: return equalsLowercase(name, "retry-after")
        case 12: return equalsLowercase(name, "content-type") || equalsLowercase(name, "max-forwards")
        case 13:
            return equalsLowercase(name, "authorization") || equalsLowercase(name, "cache-control")
                || equalsLowercase(name, "content-range") || equalsLowercase(name, "if-none-match")
        case 16: return equalsLowercase(name, "content-encoding") || equalsLowercase(name, "www-authenticate")
        case 17: return equalsLowercase(name, "if-modified-since")
        case 19: return equalsLowercase(name, "if-unmodified-since")
        default: return false
        }
    }

    /// The options a head's `Connection` fields list, lowercased, for `isNamed(_:by:)`: a field they name is
    /// removed from the trailer section as from the head (RFC 9110 §7.6.1). Empty, without allocating, for a head
    /// without `Connection`.
    public static func connectionOptions(_ headers: HTTPHeaders) -> [[UInt8]] {
        guard headers.contains(static: "Connection") else { return [] }
        return headers.listElements("Connection").map { Array($0.lowercased().utf8) }
    }

    /// Whether `name` is one of `options` (lowercased, from `connectionOptions`), case-insensitively.
    @inline(__always)
    public static func isNamed(_ name: UnsafeBufferPointer<UInt8>, by options: [[UInt8]]) -> Bool {
        for option in options where option.count == name.count {
            if option.withUnsafeBufferPointer({ bytesEqualIgnoringASCIICase(name, $0) }) { return true }
        }
        return false
    }

    public static func isDropped(_ name: String) -> Bool {
        var name = name
        return name.withUTF8 { isDropped($0) }
    }
}
