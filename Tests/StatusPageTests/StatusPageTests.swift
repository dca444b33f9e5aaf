import Testing
import ProxyConfig
import Reports
@testable import StatusPage

@Suite struct StatusPageTests {
    private let day = 86_400
    private let hash = "q83vEjRWeJA="

    private func certificate(_ index: Int, _ state: CertificateReport.State, from: Int, to: Int, now: Int,
                             subject: String = "CN=client", serial: String? = nil, takeover: Int? = nil) -> CertificateReport {
        let facts = CertificateFacts(subject: subject, issuer: "CN=ca", serial: serial ?? "0\(index)A1", notBefore: from, notAfter: to, sha256: "AB:CD")
        return CertificateReport(index: index, state: state, facts: facts, file: "/etc/c\(index).pem", takesOverAt: takeover, now: now)
    }

    /// Three identities as the browser test has them: one with a staged successor, one inside the warning window,
    /// one with only a future certificate.
    private func model(now: Int, live: LiveFigures? = nil, routeName: String = "api",
                       subject: String = "CN=client", host: String = "api.example.test") -> StatusModel {
        let rotating = [certificate(1, .active, from: now - 300 * day, to: now + 20 * day, now: now, subject: subject),
                        certificate(2, .next, from: now + 10 * day, to: now + 375 * day, now: now, takeover: now + 10 * day)]
        let validity = rotating.map { CertificateValidity(notBefore: $0.notBeforeUnix, notAfter: $0.notAfterUnix) }
        let rotatingStatus = IdentityStatus.evaluate(validity, at: now, warnDays: 30)
        let expiring = [certificate(1, .active, from: now - 340 * day, to: now + 12 * day, now: now)]
        let expiringStatus = IdentityStatus.evaluate([CertificateValidity(notBefore: now - 340 * day, notAfter: now + 12 * day)], at: now, warnDays: 30)
        let future = [certificate(1, .next, from: now + 5 * day, to: now + 90 * day, now: now, takeover: now + 5 * day)]
        let futureStatus = IdentityStatus.evaluate([CertificateValidity(notBefore: now + 5 * day, notAfter: now + 90 * day)], at: now, warnDays: 30)
        let route = Route(index: 1, name: routeName, host: .exact(host), action: .mtls(identity: "rotating"),
                          trust: TrustSettings(caFile: nil, minTLS: .tls12), timeouts: Timeouts(connect: .seconds(1), response: .seconds(1), idle: .seconds(1)))
        return StatusModel(
            generatedAt: now, config: "/etc/mtls-proxy/proxy.conf", warnDays: 30,
            identities: [
                IdentityPanel(report: IdentityReport(name: "rotating", prefer: "newest", status: rotatingStatus, certificates: rotating),
                              keys: [KeyLocation(describing: "/keys/a.key"), KeyLocation(describing: "pkcs11:token=hsm;object=a?pin-value=1234")],
                              routes: [route.label], takeovers: [nil, now + 10 * day]),
                IdentityPanel(report: IdentityReport(name: "expiring", prefer: "newest", status: expiringStatus, certificates: expiring),
                              keys: [KeyLocation(describing: "/keys/b.key")], routes: [], takeovers: [nil]),
                IdentityPanel(report: IdentityReport(name: "future", prefer: "newest", status: futureStatus, certificates: future),
                              keys: [KeyLocation(describing: "/keys/c.key")], routes: ["other"], takeovers: [now + 5 * day]),
            ],
            routes: [RouteRow(report: RouteReport(route), egress: "direct")], live: live)
    }

    private func live(now: Int, failure: String = "mtls-proxy; error=connection_refused; details=\"refused\"") -> LiveFigures {
        LiveFigures(version: "0.1.0", commit: "abc123", startedAt: now - 3_700, workers: 2, connections: 3, notReady: nil,
                    pools: [PoolFigure(upstream: "api.example.test:443", idle: 2)],
                    reloads: [ReloadEvent(at: now - 60, reason: "SIGHUP", success: false, error: "proxy.conf: routes[0].host: <expected> a host"),
                              ReloadEvent(at: now - 3_700, reason: "start", success: true)],
                    traffic: ["api": RouteTraffic(requests: 8, errors: 2, lastFailure: UpstreamFailure(at: now - 5, status: 502, proxyStatus: failure))],
                    windowSeconds: 900)
    }

    @Test func oneTimelineMarkPerCertificateWithItsDatesAsDataAttributes() {
        let now = 20_000 * day + 4_321
        let html = StatusPage.render(model(now: now), styleHash: hash)
        #expect(html.components("<g class=\"mark ") == 4)
        #expect(html.contains("data-serial=\"01A1\" data-state=\"active\" data-not-before=\"\(UTCTime.rfc3339(now - 300 * day))\" data-not-after=\"\(UTCTime.rfc3339(now + 20 * day))\""))
        #expect(html.contains("data-state=\"next\""))
        #expect(html.contains("data-takes-over-at=\"\(UTCTime.rfc3339(now + 10 * day))\""))
        #expect(html.components("<g class=\"takeover-mark\"") == 2)
        #expect(html.components("<g class=\"today-mark\" data-at=\"\(UTCTime.rfc3339(now))\"") == 3)
        // The warning window of the active certificate: its last 30 days.
        #expect(html.contains("data-warn-from=\"\(UTCTime.rfc3339(now - 10 * day))\""))
        #expect(html.contains("20 days left"))
        #expect(html.contains("expiring, no successor staged"))
        #expect(html.contains("no valid certificate"))
    }

    @Test func serialAndSubjectAreOnHoverAndInText() {
        let now = 20_000 * day
        let html = StatusPage.render(model(now: now, subject: "CN=alpha,O=Team"), styleHash: hash)
        #expect(html.contains("<title>#1 active: CN=alpha,O=Team, serial 01A1"))
        #expect(html.contains("<td>CN=alpha,O=Team<br/>"))
        #expect(html.contains("<td><code>01A1</code></td>"))
    }

    @Test func markupInARouteNameAHostASubjectAndAnUpstreamErrorIsText() {
        let now = 20_000 * day
        let evil = "<script>alert(1)</script>\"'&"
        let html = StatusPage.render(model(now: now, live: live(now: now, failure: "details=\"\(evil)\""), routeName: evil,
                                           subject: "CN=\(evil)", host: "<b>h</b>.test"), styleHash: hash)
        #expect(!html.contains("<script"))
        #expect(!html.contains("<b>h"))
        #expect(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"))
        #expect(html.contains("&lt;b&gt;h&lt;/b&gt;.test"))
        #expect(html.contains("&lt;expected&gt;"))  // a failed reload's error text
    }

    @Test func escapingReplacesControlCharactersAStrictParserRejects() {
        #expect(StatusPage.escape("a\u{0}b\u{1B}c\td") == "a\u{FFFD}b\u{FFFD}c\td")
        #expect(StatusPage.escape("<&>\"'") == "&lt;&amp;&gt;&quot;&#39;")
    }

    @Test func tokenKeysAreNamedWithoutTheirQueryOrPin() {
        #expect(KeyLocation(describing: "/etc/k.pem") == KeyLocation(kind: .file, text: "/etc/k.pem"))
        #expect(KeyLocation(describing: "pkcs11:token=hsm;object=a;pin-value=9?pin-source=file:/p")
                == KeyLocation(kind: .token, text: "pkcs11:token=hsm;object=a"))
        #expect(KeyLocation(describing: "store:handle:0x81000001?password=x") == KeyLocation(kind: .token, text: "store:handle:0x81000001"))
        let html = StatusPage.render(model(now: 20_000 * day), styleHash: hash)
        #expect(html.contains("token <code>pkcs11:token=hsm;object=a</code>"))
        #expect(!html.contains("1234"))
    }

    @Test func theOfflinePageIsTheLivePageWithoutItsLiveParts() {
        let now = 20_000 * day
        let offline = StatusPage.render(model(now: now), styleHash: hash)
        let online = StatusPage.render(model(now: now, live: live(now: now)), styleHash: hash)
        #expect(offline != online)
        #expect(online.contains("id=\"process\""))
        #expect(!offline.contains("id=\"process\""))
        #expect(!offline.contains("http-equiv=\"refresh\""))
        let stripped = StatusPage.withoutLiveParts(online).replacingAll(" · offline report (no live figures)", with: "")
        #expect(stripped == offline.replacingAll(" · offline report (no live figures)", with: ""))
    }

    @Test func liveFiguresAreShown() {
        let now = 20_000 * day
        let html = StatusPage.render(model(now: now, live: live(now: now)), styleHash: hash)
        #expect(html.contains("data-requests=\"8\""))
        #expect(html.contains("data-errors=\"2\">2 (25.0%)"))
        #expect(html.contains("class=\"failure last-failure\" data-at=\"\(UTCTime.rfc3339(now - 5))\" data-status=\"502\""))
        #expect(html.contains("error=connection_refused"))
        #expect(html.contains("<code>api.example.test:443</code></td><td class=\"num\">2</td>"))
        #expect(html.contains("1h 1m"))  // uptime
        #expect(html.contains("data-success=\"false\""))
        #expect(html.contains("http-equiv=\"refresh\" content=\"15\""))
    }

    @Test func thePolicyAllowsOnlyTheStyleItsHashNames() {
        let policy = StatusPage.contentSecurityPolicy(styleHash: hash)
        #expect(policy.hasPrefix("default-src 'none'; style-src 'sha256-\(hash)'"))
        #expect(policy.contains("frame-ancestors 'none'"))
        #expect(!policy.contains("script-src"))
        let html = StatusPage.render(model(now: 20_000 * day), styleHash: hash)
        #expect(html.contains("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src &#39;none&#39;; style-src &#39;sha256-\(hash)&#39;"))
        #expect(!html.contains("<script"))
        #expect(!html.contains("http://") || html.components("http://") == html.components("http://www.w3.org/"))
        #expect(!html.contains("https://"))
    }

    @Test func base64MatchesTheStandardAlphabetAndPadding() {
        #expect(StatusPage.base64(Array("".utf8)) == "")
        #expect(StatusPage.base64(Array("f".utf8)) == "Zg==")
        #expect(StatusPage.base64(Array("fo".utf8)) == "Zm8=")
        #expect(StatusPage.base64(Array("foobar".utf8)) == "Zm9vYmFy")
        #expect(StatusPage.base64([0xFB, 0xFF]) == "+/8=")
    }

    @Test func theLocalCAsExpiryIsShownWhenInterceptionIsConfigured() {
        let now = 20_000 * day
        var m = model(now: now)
        #expect(!StatusPage.render(m, styleHash: hash).contains("id=\"local-ca\""))
        let facts = CertificateFacts(subject: "CN=<local> CA", issuer: "CN=<local> CA", serial: "01", notBefore: now - day,
                                     notAfter: now + 20 * day, sha256: "AB")
        m.localCA = LocalCAReport(certFile: "/state/ca.pem", keyFile: "/state/ca.key", facts: facts, error: nil, now: now)
        let html = StatusPage.render(m, styleHash: hash)
        #expect(html.contains("id=\"local-ca\""))
        #expect(html.contains("data-not-after=\"\(UTCTime.rfc3339(now + 20 * day))\""))
        #expect(html.contains("<span class=\"badge warn\">20 days left</span>"))
        #expect(html.contains("CN=&lt;local&gt; CA"))
        #expect(!html.contains("/state/ca.key"))  // where the CA key is, is not the page's business
    }

    @Test func datesAndDurationsReadAsWords() {
        #expect(StatusPage.displayTime(0) == "1970-01-01 00:00 UTC")
        #expect(StatusPage.daysPhrase(1) == "1 day left")
        #expect(StatusPage.daysPhrase(-3) == "expired 3 days ago")
        #expect(StatusPage.duration(42) == "42s")
        #expect(StatusPage.duration(90_061) == "1d 1h")
        #expect(StatusPage.percent(1, 3) == "33.3%")
    }

    /// Pages rendered seconds apart within the hour draw the same picture (the offline report compares equal).
    @Test func timelineGeometryDoesNotMoveWithinTheHour() {
        let now = 20_000 * day + 60
        let a = StatusPage.render(model(now: now), styleHash: hash)
        var later = model(now: now)
        later.generatedAt = now + 30
        let b = StatusPage.render(later, styleHash: hash)
        func shapes(_ s: String) -> [Substring] { s.split(separator: "\n").filter { $0.hasPrefix("<rect") || $0.hasPrefix("<line") } }
        #expect(shapes(a) == shapes(b))
    }
}

extension String {
    func components(_ needle: String) -> Int {
        var count = 0
        var rest = Substring(self)
        while let r = rest.firstRange(of: needle) {
            count += 1
            rest = rest[r.upperBound...]
        }
        return count
    }

    func replacingAll(_ a: String, with b: String) -> String {
        var out = ""
        var rest = Substring(self)
        while let r = rest.firstRange(of: a) {
            out += rest[..<r.lowerBound] + b
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}
