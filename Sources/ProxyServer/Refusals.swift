import HTTP1
import ProxyConfig

/// Answers the proxy gives for policy decisions, shared by forwarded requests and CONNECT tunnels.
enum Refusals {
    static func denied(_ match: RouteMatch, host: String, port: Int) -> ProxyErrorResponse {
        let details = match.route.map { "denied by \($0.label)" } ?? "no route matches \(host):\(port) and [proxy] unmatched is \"deny\""
        return ProxyErrorResponse(status: 403, errorType: .httpRequestDenied, details: details,
                                  advice: "Add a [[route]] for this host to the proxy's config if it should be reachable.")
    }

    static func prohibited(host: String, address: String, reason: String) -> ProxyErrorResponse {
        ProxyErrorResponse(status: 403, errorType: .destinationIPProhibited,
                           details: "\(host) resolved to \(address), a \(reason) address; the proxy does not connect to non-public addresses",
                           advice: "If this upstream really is on a private network, set allow_private = true on its route (or pin its address with connect = \"IP:PORT\").")
    }

    static func nonCanonicalHost(_ host: String) -> ProxyErrorResponse? {
        guard AddressPolicy.isNonCanonicalNumericHost(host) else { return nil }
        return ProxyErrorResponse(status: 400, errorType: .httpRequestError,
                                  details: "\(host) is a non-canonical numeric address; write IPv4 addresses as a.b.c.d")
    }
}

extension ProxyErrorResponse {
    /// The body length of a serialised answer (what bytes_out counts).
    static func bodyLength(ofSerialized bytes: [UInt8]) -> Int {
        var i = 3
        while i < bytes.count {
            if bytes[i] == 10 && bytes[i - 1] == 13 && bytes[i - 2] == 10 && bytes[i - 3] == 13 { return bytes.count - i - 1 }
            i += 1
        }
        return 0
    }
}
