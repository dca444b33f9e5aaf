import Testing
@testable import HTTP1

/// The CONNECT request sent to a corporate proxy and the reading of its reply head.
@Suite struct CorporateProxyConnectTests {
    @Test func requestBytes() {
        let plain = String(decoding: CorporateProxyConnect.request(host: "api.example.com", port: 443, authorization: nil), as: UTF8.self)
        #expect(plain == "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n")
        let v6 = String(decoding: CorporateProxyConnect.request(host: "2001:db8::1", port: 8443, authorization: "Basic eA=="), as: UTF8.self)
        #expect(v6 == "CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\nProxy-Authorization: Basic eA==\r\n\r\n")
    }

    @Test func replies() {
        func parse(_ s: String) -> CorporateProxyConnect.Reply { CorporateProxyConnect.parseReply(Array(s.utf8)) }
        #expect(parse("HTTP/1.1 200 Connection established\r\n\r\n") == .established(headLength: 39, extra: 0))
        #expect(parse("HTTP/1.0 200 OK\r\nVia: x\r\n\r\nAB") == .established(headLength: 27, extra: 2))
        #expect(parse("HTTP/1.1 200\n\n") == .established(headLength: 14, extra: 0))
        #expect(parse("HTTP/1.1 200 Connection established\r\n") == .incomplete)
        #expect(parse("HTTP/1.1 20") == .incomplete)
        #expect(parse("") == .incomplete)
        // A refusal is known from its status line, before its head (or body) ends.
        #expect(parse("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic") == .refused(status: 407, reason: "Proxy Authentication Required"))
        #expect(parse("HTTP/1.1 403 Forbidden\r\n\r\n<html>") == .refused(status: 403, reason: "Forbidden"))
        #expect(parse("HTTP/1.1 502\r\n\r\n") == .refused(status: 502, reason: ""))
        #expect(parse("HTTP/1.1 503 \u{1}bad\r\n\r\n") == .refused(status: 503, reason: "?bad"))
        // Not HTTP: a TLS server, SSH, garbage.
        #expect(parse("SSH-2.0-OpenSSH\r\n") == .malformed("the reply is not an HTTP/1.x status line"))
        #expect(parse("HTTP/2 200\r\n\r\n") == .malformed("the reply is not an HTTP/1.x status line"))
        #expect(parse("HTTP/1.1 2000 x\r\n\r\n") == .malformed("the reply is not an HTTP/1.x status line"))
        // A head that never ends is cut off.
        let long = "HTTP/1.1 200 OK\r\n" + String(repeating: "X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", count: 500)
        #expect(parse(long) == .malformed("the reply head is longer than 16384 bytes"))
        let reason = String(repeating: "r", count: 200)
        #expect(parse("HTTP/1.1 403 \(reason)\r\n\r\n") == .refused(status: 403, reason: String(repeating: "r", count: 64)))
    }

    @Test func proxyStatusNamesTheNextHop() {
        let r = ProxyErrorResponse(status: 502, errorType: .proxyConfigurationError, details: "x", nextHop: "127.0.0.1:3128", receivedStatus: 407)
        #expect(r.proxyStatusValue == "mtls-proxy; error=proxy_configuration_error; next-hop=\"127.0.0.1:3128\"; received-status=407; details=\"x\"")
        let plain = ProxyErrorResponse(status: 502, errorType: .dnsError, details: "y")
        #expect(plain.proxyStatusValue == "mtls-proxy; error=dns_error; details=\"y\"")
    }
}
