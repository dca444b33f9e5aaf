import CEventTLS

/// One entry of OpenSSL's error queue.
public struct OpenSSLErrorEntry: Sendable, Equatable {
    public var code: UInt
    public var library: Int32
    public var reason: Int32
    /// OpenSSL's text for the reason, e.g. "tlsv13 alert certificate required".
    public var reasonText: String

    public init(code: UInt) {
        self.code = code
        self.library = ERR_GET_LIB(code)
        self.reason = ERR_GET_REASON(code)
        if let text = ERR_reason_error_string(code) {
            self.reasonText = String(cString: text)
        } else {
            self.reasonText = "error \(String(code, radix: 16))"
        }
    }

    public init(library: Int32, reason: Int32, reasonText: String) {
        self.code = 0
        self.library = library
        self.reason = reason
        self.reasonText = reasonText
    }

    /// libevent reports some socket conditions as pseudo-codes of library 0; they carry no TLS meaning.
    public var isPseudo: Bool { library == 0 }

    /// The peer closed the TCP connection without a TLS close_notify.
    public var isUnexpectedEOF: Bool { library == ERR_LIB_SSL && reason == SSL_R_UNEXPECTED_EOF_WHILE_READING }

    /// The TLS alert number, when this entry records an alert received from the peer.
    public var alert: Int? {
        library == ERR_LIB_SSL && reason >= 1000 && reason < 1256 ? Int(reason) - 1000 : nil
    }
}

public enum OpenSSLErrors {
    /// Drains this thread's error queue.
    public static func drain() -> [OpenSSLErrorEntry] {
        var entries: [OpenSSLErrorEntry] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            entries.append(OpenSSLErrorEntry(code: code))
        }
        return entries
    }

    /// Drains what OpenSSL said about a failure on a libevent OpenSSL bufferevent: the errors libevent kept for
    /// it (`bufferevent_get_openssl_error`, some of them pseudo-codes for socket conditions), then this thread's
    /// queue.
    public static func drain(bufferevent bev: OpaquePointer) -> [OpenSSLErrorEntry] {
        var entries: [OpenSSLErrorEntry] = []
        while true {
            let code = bufferevent_get_openssl_error(bev)
            if code == 0 { break }
            entries.append(OpenSSLErrorEntry(code: code))
        }
        return entries + drain()
    }

    public static func describe(_ entries: [OpenSSLErrorEntry]) -> String {
        let texts = entries.filter { !$0.isPseudo }.map(\.reasonText)
        return texts.isEmpty ? "unknown OpenSSL error" : texts.joined(separator: "; ")
    }
}
