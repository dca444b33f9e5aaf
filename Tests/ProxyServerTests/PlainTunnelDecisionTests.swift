import HTTP1
import ProxyConfig
import Testing
@testable import ProxyServer

/// Requests inside a plain tunnel (plain HTTP inside a CONNECT to port 80), decided without sockets: each is the
/// CONNECT host's http:// URL, routed by its path and re-originated to the host's https port.
@Suite struct PlainTunnelDecisionTests {
    static let runtime: ProxyRuntime = {
        let config = try! ConfigLoader.parse("""
            [proxy]
            listen = "127.0.0.1:0"
            [[route]]
            host = "status.test"
            path = "/private/"
            action = "deny"
            [[route]]
            host = "status.test"
            action = "tls"
            """, file: "test.conf", baseDirectory: "/tmp")
        return try! ProxyRuntime(config: config)
    }()

    func decide(_ head: String) -> (RequestDecision, Exchange) {
        let request = try! HeadParser.parseRequest(Array(head.utf8))
        var exchange = Exchange()
        let decision = RequestDecision.decide(request, framing: Result { try BodyFraming.forRequest(request) },
                                              kind: .plainTunnel(host: "status.test"), runtime: Self.runtime, exchange: &exchange)
        return (decision, exchange)
    }

    func upstreamHead(_ exchange: Exchange) -> String { String(decoding: exchange.upstreamRequestHead, as: UTF8.self) }

    @Test func anOriginFormRequestIsTheConnectHostsHTTPURLSentToItsHTTPSPort() {
        let (decision, exchange) = decide("GET /v1/x?token=1 HTTP/1.1\r\nHost: status.test\r\n\r\n")
        guard case .forward(let key, _) = decision else { Issue.record("not forwarded: \(decision)"); return }
        #expect((key.host, key.port) == ("status.test", 443))
        #expect(exchange.record.scheme == "http")
        #expect(exchange.record.path == "/v1/x")
        #expect(upstreamHead(exchange).hasPrefix("GET /v1/x?token=1 HTTP/1.1\r\n"))
    }

    @Test func aHostNamingAnotherHostIsRewrittenToTheConnectHost() {
        let (decision, exchange) = decide("GET /v1/x HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n")
        guard case .forward(let key, _) = decision else { Issue.record("not forwarded"); return }
        #expect(key.host == "status.test")
        #expect(upstreamHead(exchange).contains("Host: status.test\r\n"))
        #expect(!upstreamHead(exchange).contains("elsewhere.test"))
    }

    @Test func anAbsoluteFormRequestKeepsItsPathAndTheConnectHost() {
        let (decision, exchange) = decide("GET http://elsewhere.test/y HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n")
        guard case .forward(let key, _) = decision else { Issue.record("not forwarded"); return }
        #expect(key.host == "status.test")
        #expect(upstreamHead(exchange).hasPrefix("GET /y HTTP/1.1\r\n"))
    }

    @Test func pathScopedRoutesApplyPerRequest() {
        guard case .answer(let response, _, _) = decide("GET /private/report HTTP/1.1\r\nHost: status.test\r\n\r\n").0 else {
            Issue.record("/private/ not denied"); return
        }
        #expect(response.status == 403)
    }

    @Test func connectAndBadTargetsInsideAreRefused() {
        guard case .answer(let connect, _, _) = decide("CONNECT status.test:443 HTTP/1.1\r\nHost: status.test:443\r\n\r\n").0,
              case .answer(let star, _, _) = decide("OPTIONS * HTTP/1.1\r\nHost: status.test\r\n\r\n").0 else {
            Issue.record("not refused"); return
        }
        #expect(connect.status == 405)
        #expect(star.status == 400)
    }
}
