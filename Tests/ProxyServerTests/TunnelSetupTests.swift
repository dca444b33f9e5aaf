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

    @Test func mtlsRouteIsInterceptedWhenTheLocalCAIsSet() {
        guard case .intercept(let identity) = mode("api.test:443") else { Issue.record("not intercepted"); return }
        #expect(identity == "us")
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
