import HTTP1
import ProxyConfig
import Testing
@testable import ProxyServer

/// What a CONNECT becomes, decided without sockets.
@Suite struct TunnelSetupTests {
    let trust = TrustSettings(caFile: nil, minTLS: .tls12)
    let timeouts = Timeouts(connect: .seconds(5), response: .seconds(60), idle: .seconds(90))

    var router: Router {
        Router(routes: [
            Route(index: 1, host: HostPattern.parse("api.test")!, action: .mtls(identity: "us"), trust: trust, timeouts: timeouts),
            Route(index: 2, host: HostPattern.parse("status.test")!, action: .tls, trust: trust, timeouts: timeouts),
            Route(index: 3, host: HostPattern.parse("echo.test")!, port: 7000, action: .tls, trust: trust, timeouts: timeouts),
            Route(index: 4, host: HostPattern.parse("evil.test")!, action: .deny, trust: trust, timeouts: timeouts),
        ], unmatched: .deny, upstream: UpstreamSettings())
    }

    func mode(_ target: String, intercept: Bool = true) -> TunnelSetup.Mode {
        TunnelSetup.decide(target: target, router: router, interceptionEnabled: intercept).mode
    }

    func refusal(_ mode: TunnelSetup.Mode) -> ProxyErrorResponse? {
        if case .refuse(let r) = mode { return r }
        return nil
    }

    @Test func tlsRouteIsABlindTunnel() {
        guard case .blind = mode("status.test:443") else { Issue.record("not blind"); return }
    }

    /// What `explain` reports for an https:// URL sent through HTTPS_PROXY: the same decision, in its words.
    @Test func theTLSOutcomeExplainReportsIsTheDataPathsDecision() {
        func kind(_ target: String, intercept: Bool) -> TunnelTLSOutcome.Kind {
            TunnelTLSOutcome.decide(target: target, router: router, interceptionEnabled: intercept).kind
        }
        guard case .blindTunnel = kind("status.test:443", intercept: false) else { Issue.record("tls route: not blind"); return }
        guard case .intercepted(let identity) = kind("api.test:443", intercept: true), identity == "us" else {
            Issue.record("mtls route with interception: not intercepted for us"); return
        }
        guard case .refused(let off, false) = kind("api.test:443", intercept: false) else { Issue.record("mtls route without interception: not refused"); return }
        #expect(off.status == 403)
        #expect(off.details.contains("a blind tunnel cannot add its client certificate"))
        guard case .refused(let port, false) = kind("status.test:8443", intercept: true) else { Issue.record("unnamed port: not refused"); return }
        #expect(port.details.contains("tunnels to port 8443 are refused unless a route names the port"))
        // Port 80 of an mtls host: the tunnel opens for plain requests; TLS inside it is refused.
        guard case .refused(let tlsOn80, true) = kind("api.test:80", intercept: false) else { Issue.record("TLS on port 80: not refused after opening"); return }
        #expect(tlsOn80.details.contains("TLS was sent inside a CONNECT to port 80"))
    }

    func inside(_ mode: TunnelSetup.Mode) -> TunnelSetup.Inside? {
        if case .open(let inside) = mode { return inside }
        return nil
    }

    let clientHello: UInt8 = 0x16
    let plainRequest = UInt8(ascii: "G")

    @Test func mtlsRouteIsInterceptedWhenTheLocalCAIsSet() {
        guard let inside = inside(mode("api.test:443")) else { Issue.record("not opened"); return }
        #expect(inside.service(firstByte: clientHello) == .intercept(identity: "us"))
    }

    @Test func plainHTTPInsideAnInterceptedTunnelTo443IsRefusedByName() {
        guard case .refuse(let r, let answerInPlain)? = inside(mode("api.test:443"))?.service(firstByte: plainRequest) else {
            Issue.record("plain HTTP inside CONNECT :443 not refused"); return
        }
        #expect(answerInPlain)
        #expect(r.status == 400)
        #expect(r.details.contains("plain HTTP was sent inside a CONNECT to port 443 of api.test"))
        #expect(!r.details.contains("local CA"))
    }

    // Node's fetch (undici ProxyAgent) tunnels http:// URLs: CONNECT host:80, then plain HTTP inside.
    @Test func connectTo80OfAnMtlsRouteServesPlainRequestsWithoutALocalCA() {
        for intercept in [false, true] {
            let setup = TunnelSetup.decide(target: "api.test:80", router: router, interceptionEnabled: intercept)
            guard let inside = inside(setup.mode) else { Issue.record("CONNECT api.test:80 not opened"); continue }
            #expect(inside.service(firstByte: plainRequest) == .plainRequests)
            #expect(setup.match?.route?.index == 1)  // the host-level route of its http:// URLs (port 443)
            #expect(setup.port == 80)
        }
    }

    @Test func tlsInsideAConnectTo80WithoutARouteNamingPort80IsRefusedAfterTheFirstBytes() {
        guard case .refuse(let r, let answerInPlain)? = inside(mode("api.test:80"))?.service(firstByte: clientHello) else {
            Issue.record("TLS inside CONNECT :80 not refused"); return
        }
        #expect(!answerInPlain)  // the client speaks TLS: an HTTP answer would mean nothing to it
        #expect(r.status == 403)
        #expect(r.details.contains("TLS was sent inside a CONNECT to port 80 of api.test"))
        #expect(r.details.contains("tunnels to port 80 are refused unless a route names the port"))
    }

    @Test func connectTo80OfATLSRouteServesPlainRequestsToo() {
        #expect(inside(mode("status.test:80"))?.service(firstByte: plainRequest) == .plainRequests)
    }

    @Test func connectTo80OfADeniedUnmatchedOrOtherPortHostIsStillRefused() {
        #expect(refusal(mode("evil.test:80"))?.status == 403)
        #expect(refusal(mode("nowhere.test:80"))?.status == 403)
        #expect(refusal(mode("echo.test:80"))?.status == 403)  // its route names port 7000
    }

    @Test func aRouteNamingPort80KeepsItsTunnelAndPlainRequestsJoinInterception() {
        let named = Router(routes: [
            Route(index: 1, host: HostPattern.parse("legacy.test")!, port: 80, action: .tls, trust: trust, timeouts: timeouts),
            Route(index: 2, host: HostPattern.parse("api.test")!, port: 80, action: .mtls(identity: "us"), trust: trust, timeouts: timeouts),
            Route(index: 3, host: HostPattern.parse("api.test")!, action: .mtls(identity: "us"), trust: trust, timeouts: timeouts),
        ], unmatched: .deny, upstream: UpstreamSettings())
        guard case .blind = TunnelSetup.decide(target: "legacy.test:80", router: named, interceptionEnabled: true).mode else {
            Issue.record("a tls route naming port 80 is no longer blind"); return
        }
        let inside = inside(TunnelSetup.decide(target: "api.test:80", router: named, interceptionEnabled: true).mode)
        #expect(inside?.service(firstByte: clientHello) == .intercept(identity: "us"))
        #expect(inside?.service(firstByte: plainRequest) == .plainRequests)
    }

    @Test func pathScopedRoutesOfAHostMakeItsConnectTo80ServePlainRequestsEachRoutedByPath() {
        let scoped = Router(routes: [
            Route(index: 1, host: HostPattern.parse("api.test")!, pathPrefix: "/admin/", action: .deny, trust: trust, timeouts: timeouts),
            Route(index: 2, host: HostPattern.parse("api.test")!, action: .mtls(identity: "us"), trust: trust, timeouts: timeouts),
        ], unmatched: .deny, upstream: UpstreamSettings())
        let inside = inside(TunnelSetup.decide(target: "api.test:80", router: scoped, interceptionEnabled: false).mode)
        #expect(inside?.service(firstByte: plainRequest) == .plainRequests)
    }

    @Test func mtlsRouteWithoutInterceptionIsRefusedWithBothWaysOut() {
        let r = refusal(mode("api.test:443", intercept: false))
        #expect(r?.status == 403)
        #expect(r?.details.contains("blind tunnel cannot add its client certificate") == true)
    }

    @Test func portsOtherThan443NeedARouteNamingThem() {
        #expect(refusal(mode("status.test:8443"))?.details.contains("tunnels to port 8443 are refused") == true)
        guard case .blind = mode("echo.test:7000") else { Issue.record("named port refused"); return }
    }

    @Test func deniedAndUnmatchedHostsAreRefused() {
        #expect(refusal(mode("evil.test:443"))?.status == 403)
        #expect(refusal(mode("nowhere.test:443"))?.status == 403)
    }

    @Test func malformedTargetsAreBadRequests() {
        #expect(refusal(mode("api.test"))?.status == 400)
        #expect(refusal(mode("0x7f.1:443"))?.status == 400)
    }
}
