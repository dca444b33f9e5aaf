import Testing
@testable import ProxyConfig

private let trust = TrustSettings(caFile: nil, minTLS: .tls12)
private let timeouts = Timeouts(connect: .seconds(5), response: .seconds(60), idle: .seconds(90))

private func route(_ index: Int, _ host: String, port: Int? = nil, path: String? = nil, _ action: RouteAction) -> Route {
    Route(index: index, host: HostPattern.parse(host)!, port: port, pathPrefix: path, action: action, trust: trust, timeouts: timeouts)
}

@Suite struct RouterTests {
    let router = Router(routes: [
        route(1, "api.mygreatbank.test", path: "/v2/", .mtls(identity: "eu")),
        route(2, "api.mygreatbank.test", .mtls(identity: "us")),
        route(3, "*.example.com", port: 8443, .tls),
        route(4, "*.example.com", .deny),
        route(5, "status.example.org", .tls),
    ], unmatched: .deny, upstream: UpstreamSettings())

    @Test func firstMatchWinsInFileOrder() {
        #expect(router.match(host: "api.mygreatbank.test", port: 443, path: "/v2/accounts").route?.index == 1)
        #expect(router.match(host: "api.mygreatbank.test", port: 443, path: "/v1/accounts").route?.index == 2)
        #expect(router.match(host: "api.mygreatbank.test", port: 443, path: "/v2").route?.index == 2)
    }

    @Test func wildcardMatchesSubdomainsOnly() {
        #expect(router.match(host: "a.example.com", port: 8443, path: "/").route?.index == 3)
        #expect(router.match(host: "a.b.example.com", port: 443, path: "/").route?.index == 4)
        #expect(router.match(host: "example.com", port: 443, path: "/").route == nil)
        #expect(router.match(host: "badexample.com", port: 443, path: "/").route == nil)
    }

    @Test func unmatchedPolicyApplies() {
        let m = router.match(host: "elsewhere.test", port: 443, path: "/")
        #expect(m.route == nil)
        #expect(m.action == .deny)
        #expect(m.label == "unmatched")
        let open = Router(routes: [], unmatched: .tls, upstream: UpstreamSettings())
        #expect(open.match(host: "elsewhere.test", port: 443, path: "/").action == .tls)
    }

    @Test func reasonNamesTheMatchedFields() {
        let m = router.match(host: "a.example.com", port: 8443, path: "/")
        #expect(m.reason.contains("host *.example.com"))
        #expect(m.reason.contains("port 8443"))
    }

    @Test func hostPatterns() {
        #expect(HostPattern.parse("API.Example.COM") == .exact("api.example.com"))
        #expect(HostPattern.parse("*") == .any)
        #expect(HostPattern.parse("*.a.b") == .subdomains(of: "a.b"))
        #expect(HostPattern.parse("[::1]") == .exact("::1"))
        #expect(HostPattern.parse("a.*.b") == nil)
        #expect(HostPattern.parse("") == nil)
        #expect(HostPattern.parse("a..b") == nil)
    }
}

@Suite struct CertificateSelectionTests {
    // 2025 certificate: 2025-03-03 .. 2026-04-04; 2026 certificate: 2026-01-29 .. 2027-03-02.
    let old = CertificateValidity(notBefore: 1_740_960_000, notAfter: 1_775_260_800)
    let new = CertificateValidity(notBefore: 1_769_644_800, notAfter: 1_803_945_600)

    @Test func newestValidWins() {
        #expect(CertificateSelection.active([old, new], at: 1_750_000_000) == 0)  // only the old one is valid
        #expect(CertificateSelection.active([old, new], at: 1_770_000_000) == 1)  // both valid: the newer
        #expect(CertificateSelection.active([new, old], at: 1_770_000_000) == 0)  // order in the file does not matter
        #expect(CertificateSelection.active([old, new], at: 1_780_000_000) == 1)
        #expect(CertificateSelection.active([old, new], at: 1_900_000_000) == nil)
    }

    @Test func oldestPreferenceKeepsTheOldOne() {
        #expect(CertificateSelection.active([old, new], at: 1_770_000_000, prefer: .oldest) == 0)
        #expect(CertificateSelection.active([old, new], at: 1_780_000_000, prefer: .oldest) == 1)
    }

    @Test func nextChangeIsTheNextBoundary() {
        #expect(CertificateSelection.nextChange([old, new], after: 1_750_000_000) == new.notBefore)
        #expect(CertificateSelection.nextChange([old, new], after: 1_770_000_000) == old.notAfter)
        #expect(CertificateSelection.nextChange([old, new], after: 1_900_000_000) == nil)
    }
}

@Suite struct IdentityStatusTests {
    let day = 86_400
    let now = 1_800_000_000

    @Test func healthyWhenFarFromExpiry() {
        let s = IdentityStatus.evaluate([CertificateValidity(notBefore: now - 100 * day, notAfter: now + 200 * day)], at: now, warnDays: 30)
        #expect(s.active == 0)
        #expect(s.health == .ok)
        #expect(s.secondsLeft == 200 * day)
        #expect(s.next?.at == now + 200 * day)
        #expect(s.next?.index == nil)
    }

    @Test func warnsWhenExpiringWithNoSuccessor() {
        let s = IdentityStatus.evaluate([CertificateValidity(notBefore: now - 100 * day, notAfter: now + 10 * day)], at: now, warnDays: 30)
        #expect(s.health == .expiringWithoutSuccessor)
    }

    @Test func aStagedSuccessorSilencesTheWarningAndIsAnnounced() {
        let old = CertificateValidity(notBefore: now - 300 * day, notAfter: now + 10 * day)
        let new = CertificateValidity(notBefore: now + 5 * day, notAfter: now + 400 * day)
        let s = IdentityStatus.evaluate([old, new], at: now, warnDays: 30)
        #expect(s.active == 0)
        #expect(s.health == .ok)
        #expect(s.next?.at == now + 5 * day)
        #expect(s.next?.index == 1)
        // With prefer = oldest the switch waits for the old one to expire.
        let o = IdentityStatus.evaluate([old, new], prefer: .oldest, at: now, warnDays: 30)
        #expect(o.next?.at == now + 10 * day)
        #expect(o.next?.index == 1)
    }

    @Test func aGapIsNotASuccessor() {
        let old = CertificateValidity(notBefore: now - 300 * day, notAfter: now + 10 * day)
        let late = CertificateValidity(notBefore: now + 20 * day, notAfter: now + 400 * day)
        #expect(IdentityStatus.evaluate([old, late], at: now, warnDays: 30).health == .expiringWithoutSuccessor)
    }

    @Test func nothingValid() {
        let expired = CertificateValidity(notBefore: now - 400 * day, notAfter: now - day)
        let future = CertificateValidity(notBefore: now + day, notAfter: now + 400 * day)
        let s = IdentityStatus.evaluate([expired, future], at: now, warnDays: 30)
        #expect(s.active == nil)
        #expect(s.health == .noValidCertificate)
        #expect(s.next?.at == now + day)
        #expect(s.next?.index == 1)
    }
}

@Suite struct TunnelRoutingTests {
    let trust = TrustSettings(caFile: nil, minTLS: .tls12)
    let timeouts = Timeouts(connect: .seconds(5), response: .seconds(60), idle: .seconds(90))

    func r(_ index: Int, _ host: String, path: String? = nil, _ action: RouteAction, connect: HostPort? = nil) -> Route {
        Route(index: index, name: "r\(index)", host: HostPattern.parse(host)!, pathPrefix: path, action: action, connect: connect,
              trust: trust, timeouts: timeouts)
    }

    @Test func aTunnelIsDecidedByRoutesWithoutAPath() {
        let router = Router(routes: [
            Route(index: 1, host: .exact("api.test"), pathPrefix: "/eu/", action: .mtls(identity: "eu"), trust: trust, timeouts: timeouts),
            Route(index: 2, host: .exact("api.test"), action: .mtls(identity: "us"), trust: trust, timeouts: timeouts),
            Route(index: 3, host: .any, port: 8443, action: .tls, trust: trust, timeouts: timeouts),
        ], unmatched: .deny, upstream: UpstreamSettings())
        #expect(router.matchTunnel(host: "api.test", port: 443).route?.index == 2)
        #expect(router.matchTunnel(host: "other.test", port: 8443).route?.index == 3)
        #expect(router.matchTunnel(host: "other.test", port: 443).action == .deny)
        let plan = router.planTunnel(host: "api.test", port: 443)
        #expect(plan.kind == .intercept)
        #expect(plan.decision.route?.index == 2)
        #expect(plan.pathRoutes.map(\.index) == [1])
    }

    @Test func aTlsRouteWithPinsOrRevocationIsNeverABlindTunnel() {
        var pinned = trust
        pinned.pins = [[UInt8](repeating: 1, count: 32)]
        var revocation = trust
        revocation.revocation = .soft
        revocation.crlFiles = ["/crl.pem"]
        var policy = trust
        policy.minTLS = .tls13  // a TLS policy alone is the client's business in a blind tunnel, as ca_file is
        for (t, kind) in [(pinned, TunnelPlan.Kind.intercept), (revocation, .intercept), (policy, .blindTunnel)] {
            let router = Router(routes: [Route(index: 1, host: .exact("s.test"), action: .tls, trust: t, timeouts: timeouts)],
                                unmatched: .deny, upstream: UpstreamSettings())
            #expect(router.planTunnel(host: "s.test", port: 443).kind == kind)
        }
    }

    @Test func pathDenyAheadOfAnIdentityRouteNeedsInterceptionNotA403() {
        let router = Router(routes: [r(1, "api.test", path: "/admin", .deny), r(2, "api.test", .mtls(identity: "us"))],
                            unmatched: .deny, upstream: UpstreamSettings())
        let plan = router.planTunnel(host: "api.test", port: 443)
        #expect(plan.kind == .intercept)
        #expect(plan.decision.label == "r2")
        #expect(plan.pathRoutes.map(\.label) == ["r1"])
    }

    @Test func pathScopedTlsRouteFirstDoesNotMakeTheTunnelBlind() {
        let router = Router(routes: [r(1, "api.test", path: "/public/", .tls), r(2, "api.test", .mtls(identity: "us"))],
                            unmatched: .deny, upstream: UpstreamSettings())
        let plan = router.planTunnel(host: "api.test", port: 443)
        #expect(plan.kind == .intercept)
        #expect(plan.decision.label == "r2")
    }

    @Test func hostAllowedOnlyOnAPathIsNotTunnelledBlind() {
        let router = Router(routes: [r(1, "s.test", path: "/status/", .tls), r(2, "s.test", .deny)],
                            unmatched: .deny, upstream: UpstreamSettings())
        let plan = router.planTunnel(host: "s.test", port: 443)
        #expect(plan.kind == .intercept)
        #expect(plan.decision.label == "r2")
        #expect(plan.pathRoutes.map(\.label) == ["r1"])
        // The same with the rest denied by the unmatched policy.
        let unmatched = Router(routes: [r(1, "s.test", path: "/status/", .tls)], unmatched: .deny, upstream: UpstreamSettings())
        #expect(unmatched.planTunnel(host: "s.test", port: 443).kind == .intercept)
        #expect(unmatched.planTunnel(host: "s.test", port: 443).decision.route == nil)
    }

    @Test func onlyTlsRoutesToTheSameAddressGiveABlindTunnel() {
        let a = HostPort(host: "127.0.0.1", port: 1), b = HostPort(host: "127.0.0.1", port: 2)
        let same = Router(routes: [r(1, "t.test", path: "/a/", .tls, connect: a), r(2, "t.test", .tls, connect: a)],
                          unmatched: .deny, upstream: UpstreamSettings())
        #expect(same.planTunnel(host: "t.test", port: 443).kind == .blindTunnel)
        #expect(same.planTunnel(host: "t.test", port: 443).decision.label == "r2")
        let other = Router(routes: [r(1, "t.test", path: "/a/", .tls, connect: b), r(2, "t.test", .tls, connect: a)],
                           unmatched: .deny, upstream: UpstreamSettings())
        #expect(other.planTunnel(host: "t.test", port: 443).kind == .intercept)
    }

    @Test func pathRoutesBehindTheHostRouteNeverApplyAndDoNotCount() {
        let router = Router(routes: [r(1, "t.test", .tls), r(2, "t.test", path: "/x/", .deny), r(3, "t.test", path: "/y", .deny)],
                            unmatched: .deny, upstream: UpstreamSettings())
        let plan = router.planTunnel(host: "t.test", port: 443)
        #expect(plan.kind == .blindTunnel)
        #expect(plan.pathRoutes.isEmpty)
    }

    @Test func denyAndSameDecisionPathRoutes() {
        let router = Router(routes: [r(1, "d.test", path: "/x", .deny), r(2, "d.test", .deny), r(3, "m.test", path: "/a", .mtls(identity: "us")),
                                     r(4, "m.test", .mtls(identity: "us"))],
                            unmatched: .tls, upstream: UpstreamSettings())
        #expect(router.planTunnel(host: "d.test", port: 443).kind == .deny)
        let m = router.planTunnel(host: "m.test", port: 443)
        #expect(m.kind == .intercept)
        #expect(m.pathRoutes.isEmpty)
        #expect(router.planTunnel(host: "open.test", port: 443).kind == .blindTunnel)
    }
}

@Suite struct RouteExplanationTests {
    let router = Router(routes: [
        route(1, "api.test", path: "/admin", .deny),
        route(2, "api.test", port: 8443, .tls),
        route(3, "*.other.test", .tls),
        route(4, "api.test", .mtls(identity: "us")),
    ], unmatched: .deny, upstream: UpstreamSettings())

    @Test func explainIsTheMatchWithItsReasons() {
        let e = router.explain(host: "api.test", port: 443, path: "/v1/x")
        #expect(e.match == router.match(host: "api.test", port: 443, path: "/v1/x"))
        #expect(e.match.route?.index == 4)
        #expect(e.skipped.map(\.route.index) == [1, 2, 3])
        #expect(e.skipped.map(\.reason.description) == [
            "path prefix /admin (whole segments) does not match /v1/x",
            "port 8443 does not match 443",
            "host *.other.test does not match api.test",
        ])
    }

    @Test func tunnelExplanationSkipsPathScopedRoutes() {
        let e = router.explain(host: "api.test", port: 443, path: nil)
        #expect(e.match.route?.index == 4)
        #expect(e.skipped.first?.reason == .pathScoped(prefix: "/admin"))
    }

    @Test func routesMatchTheCanonicalHost() {
        // Config spelled with a trailing dot matches the canonical (dot-less) request host.
        let dotted = Router(routes: [route(1, "blocked.example.", .deny), route(2, "*.example.org.", .deny)],
                            unmatched: .tls, upstream: UpstreamSettings())
        #expect(dotted.match(host: "blocked.example", port: 443, path: "/").route?.index == 1)
        #expect(dotted.match(host: "a.example.org", port: 443, path: "/").route?.index == 2)
        #expect(HostPattern.parse("a..b.") == nil)
        #expect(HostPattern.parse(".") == nil)
    }

    @Test func unmatchedTakesUpstreamPathRules() {
        var upstream = UpstreamSettings()
        upstream.pathRules = PathRules(mergeSlashes: true, escapedSlashes: .keep)
        let r = Router(routes: [], unmatched: .tls, upstream: upstream)
        #expect(r.match(host: "x.test", port: 443, path: "/").pathRules == upstream.pathRules)
    }
}

/// Review of issue 11: a route naming an IP literal matches every spelling of that address that reaches it.
@Suite struct HostLiteralRouteTests {
    @Test func ipv6RouteHostsAreCanonical() {
        #expect(HostPattern.parse("[0:0:0:0:0:0:0:1]") == .exact("::1"))
        #expect(HostPattern.parse("0::1") == .exact("::1"))
        #expect(HostPattern.parse("[FE80::00AB]") == .exact("fe80::ab"))
        let router = Router(routes: [route(1, "[0::1]", .deny)], unmatched: .tls, upstream: UpstreamSettings())
        #expect(router.match(host: "::1", port: 443, path: "/").action == .deny)
    }

    /// `[::ffff:127.0.0.1]` is dialled as 127.0.0.1, so a route for 127.0.0.1 would be skipped: refused like
    /// the legacy numeric forms.
    @Test func ipv4MappedLiteralsAreNonCanonical() {
        #expect(AddressPolicy.isNonCanonicalNumericHost("::ffff:127.0.0.1"))
        #expect(AddressPolicy.isNonCanonicalNumericHost("::ffff:7f00:1"))
        #expect(!AddressPolicy.isNonCanonicalNumericHost("::1"))
        #expect(!AddressPolicy.isNonCanonicalNumericHost("127.0.0.1"))
        #expect(!AddressPolicy.isNonCanonicalNumericHost("api.example.com"))
    }
}
