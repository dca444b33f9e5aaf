import HTTP1
import ProxyConfig
import Testing
@testable import ProxyServer

/// Route `index` (named "r<index>") for `host`, with TLS 1.2 trust and the default timeouts.
private func route(_ index: Int, _ host: String, path: String? = nil, _ action: RouteAction, rules: PathRules = PathRules(),
                   prefixMatch: PathPrefixMatch = .segment) -> Route {
    Route(index: index, name: "r\(index)", host: HostPattern.parse(host)!, pathPrefix: path, pathPrefixMatch: prefixMatch, action: action,
          trust: TrustSettings(caFile: nil, minTLS: .tls12),
          timeouts: Timeouts(connect: .seconds(5), response: .seconds(60), idle: .seconds(90)), pathRules: rules)
}

/// Normalise, then route: the route decides on exactly the path that is forwarded, and a relaxation applies
/// only when the route that the relaxed path reaches allows it.
@Suite struct RequestRoutingTests {
    var router: Router {
        Router(routes: [
            route(1, "api.test", path: "/admin", .deny),
            route(2, "api.test", path: "/merge/", .mtls(identity: "us"), rules: PathRules(mergeSlashes: true)),
            route(3, "api.test", path: "/keep/", .mtls(identity: "us"), rules: PathRules(escapedSlashes: .keep)),
            route(4, "api.test", .mtls(identity: "us")),
        ], unmatched: .deny, upstream: UpstreamSettings())
    }

    func decide(_ path: String) -> RequestRouting.Outcome {
        RequestRouting.decide(router, host: "api.test", port: 443, path: path[...])
    }

    func routed(_ path: String) -> (String, String)? {
        guard case .routed(let p, let m) = decide(path) else { return nil }
        return (p, m.label)
    }

    @Test func encodedLettersReachTheDenyRoute() {
        #expect(routed("/%61dmin/x")! == ("/admin/x", "r1"))
        #expect(routed("/%61%64%6D%69%6E")! == ("/admin", "r1"))
    }

    @Test func strictFormsAreRefusedWherever() {
        #expect(decide("//admin/x") == .refused(.emptySegment, match: router.match(host: "api.test", port: 443, path: "/admin/x")))
        #expect(decide("/v1/../admin") == .refused(.dotSegment, match: nil))
        #expect(decide("/v1/..;/admin") == .refused(.dotSegmentWithParameters, match: nil))
        #expect(decide("/a%2Fb") == .refused(.encodedSlash, match: router.match(host: "api.test", port: 443, path: "/a%2Fb")))
        // A dot segment behind an encoded slash is named, not the slash.
        #expect(decide("/v1%2F..%2Fadmin") == .refused(.dotSegment, match: nil))
    }

    @Test func aRelaxationAppliesOnlyOnTheRouteThatAllowsIt() {
        #expect(routed("/merge//a///b")! == ("/merge/a/b", "r2"))
        #expect(routed("//merge/a")! == ("/merge/a", "r2"))
        #expect(routed("/keep/g%2fp")! == ("/keep/g%2Fp", "r3"))
        // The merge route does not keep %2F, the keep route does not merge.
        guard case .refused(.encodedSlash, let m1) = decide("/merge/a%2Fb") else { Issue.record("merge route kept %2F"); return }
        #expect(m1?.label == "r2")
        guard case .refused(.emptySegment, let m2) = decide("/keep//a") else { Issue.record("keep route merged //"); return }
        #expect(m2?.label == "r3")
        // Merging never hides a dot segment.
        #expect(decide("/merge/..//admin") == .refused(.dotSegment, match: nil))
    }

    @Test func mergedPathThatReachesAnotherRouteIsJudgedByThatRoute() {
        // "//admin" merged is "/admin": the deny route decides, and it does not allow merging.
        guard case .refused(.emptySegment, let m) = decide("//admin") else { Issue.record("merged onto the deny route"); return }
        #expect(m?.label == "r1")
        let body = RequestRouting.badRequest(.emptySegment, match: m)
        #expect(body.status == 400)
        #expect(!body.advice.contains("merge_slashes"))  // no advice to relax a deny route
    }

    @Test func badRequestNamesTheFormAndTheKeyButNotTheRequest() {
        let m = router.match(host: "api.test", port: 443, path: "/x")
        let r = RequestRouting.badRequest(.encodedSlash, match: m)
        #expect(r.status == 400)
        #expect(r.errorType == .httpRequestError)
        #expect(r.proxyStatusValue == "mtls-proxy; error=http_request_error; details=\"refused: encoded slash (%2F) in the path\"")
        #expect(r.advice.contains("escaped_slashes = \"keep\" on r4"))
        #expect(RequestRouting.badRequest(.emptySegment, match: nil).advice.contains("merge_slashes = true in [upstream]"))
    }

    @Test func upstreamRulesApplyToUnmatchedHosts() {
        var upstream = UpstreamSettings()
        upstream.pathRules = PathRules(mergeSlashes: true)
        let open = Router(routes: [], unmatched: .tls, upstream: upstream)
        guard case .routed(let p, _) = RequestRouting.decide(open, host: "x.test", port: 443, path: "//a//b") else {
            Issue.record("not merged"); return
        }
        #expect(p == "/a/b")
    }

    @Test func interceptionRequiredNamesThePathRoutes() {
        let r = Router(routes: [route(1, "s.test", path: "/status/", .tls), route(2, "s.test", .deny)], unmatched: .deny,
                       upstream: UpstreamSettings())
        let plan = r.planTunnel(host: "s.test", port: 443)
        let answer = TunnelRouting.interceptionRequired(plan, host: "s.test")
        #expect(answer.status == 403)
        #expect(answer.details.contains("r1 (path /status/)"))
        #expect(answer.details.contains("interception"))
        let mtls = Router(routes: [route(1, "m.test", .mtls(identity: "us"))], unmatched: .deny, upstream: UpstreamSettings())
        #expect(TunnelRouting.interceptionRequired(mtls.planTunnel(host: "m.test", port: 443), host: "m.test").details
            .contains("mTLS route (identity us)"))
    }
}

/// Review of issue 11 (routing attacks): a path is refused when a server that reads it differently from its
/// canonical spelling would be served by another route. Tomcat, Spring and Jetty strip `;parameters` from each
/// segment (`/admin;x/secret` is `/admin/secret`, `/;x/admin` is `//admin`, then `/admin`); nginx and Python's
/// http.server decode a kept `%2F` into a separator.
@Suite struct UpstreamReadingTests {
    var router: Router {
        Router(routes: [
            route(1, "api.test", path: "/admin/", .deny),
            route(2, "api.test", path: "/files/private", .deny),
            // A string prefix: /files%2Fprivate is under it, as it is under any prefix ending in /.
            route(3, "api.test", path: "/files", .mtls(identity: "us"), rules: PathRules(escapedSlashes: .keep), prefixMatch: .string),
            route(4, "api.test", .mtls(identity: "us")),
        ], unmatched: .deny, upstream: UpstreamSettings())
    }

    func decide(_ path: String) -> RequestRouting.Outcome {
        RequestRouting.decide(router, host: "api.test", port: 443, path: path[...])
    }

    func routedLabel(_ path: String) -> String? {
        guard case .routed(_, let m) = decide(path) else { return nil }
        return m.label
    }

    @Test(arguments: ["/admin;x/secret", "/admin;/secret", "/;x/admin/secret", "/;/admin/", "/admin%3Bx/secret",
                      "/files;v=1/private/x"])
    func pathParametersThatHideAnotherRouteAreRefused(path: String) {
        guard case .refused(let refusal, _) = decide(path) else { Issue.record("\(path) was routed"); return }
        #expect(refusal == .pathParameters)
        #expect(RequestRouting.badRequest(refusal, match: nil).status == 400)
    }

    @Test func pathParametersThatChangeNothingAreForwarded() {
        #expect(routedLabel("/v1;x/y") == "r4")
        #expect(routedLabel("/admin/x;y") == "r1")  // denied either way
        #expect(routedLabel("/files/a;b") == "r3")
        guard case .routed(let p, _) = decide("/v1;x=%2a/y") else { Issue.record("refused"); return }
        #expect(p == "/v1;x=%2A/y")  // forwarded as routed, not stripped
    }

    /// IIS and Windows file systems drop dots and spaces at the end of a segment: `/files/private.` is
    /// `/files/private` there. With prefixes matching whole segments, `/files/private.` is not under
    /// `/files/private`, so the reading that trims them must not reach another route.
    @Test(arguments: ["/files/private.", "/files/private./x", "/admin./secret", "/files/private%20", "/admin.%20/x",
                      "/files/private..."])
    func trailingDotsOrSpacesThatReachAnotherRouteAreRefused(path: String) {
        guard case .refused(let refusal, _) = decide(path) else { Issue.record("\(path) was routed"); return }
        #expect(refusal.description.contains("trimming"), "\(refusal)")
        #expect(RequestRouting.badRequest(refusal, match: nil).status == 400)
    }

    @Test func trailingDotsThatChangeNothingAreForwarded() {
        #expect(routedLabel("/files/private.txt") == "r3")  // another segment: not under /files/private
        #expect(routedLabel("/v1./x") == "r4")
        #expect(routedLabel("/files/public.") == "r3")
    }

    @Test(arguments: ["/files%2Fprivate/x", "/files%2fprivate", "/files%5Cprivate/x", "/files%2F%2Fprivate"])
    func keptEscapedSlashThatReachesAnotherRouteWhenDecodedIsRefused(path: String) {
        guard case .refused(let refusal, _) = decide(path) else { Issue.record("\(path) was routed"); return }
        #expect(refusal == .escapedSlashReading)
    }

    /// `[upstream] escaped_slashes = "keep"` relaxes every unmatched request; a deny route still sees the
    /// decoded reading, and a merged one.
    @Test func upstreamWideKeepDoesNotOpenADenyRoute() {
        var upstream = UpstreamSettings()
        upstream.pathRules = PathRules(mergeSlashes: true, escapedSlashes: .keep)
        let open = Router(routes: [route(1, "api.test", path: "/admin/", .deny)], unmatched: .tls, upstream: upstream)
        for path in ["/admin%2Fx", "/admin%5Cx", "//admin%2F", "/admin;p/x"] {
            guard case .refused(let r, _) = RequestRouting.decide(open, host: "api.test", port: 443, path: path[...]) else {
                Issue.record("\(path) was routed"); continue
            }
            #expect(r == .escapedSlashReading || r == .pathParameters)
        }
        guard case .routed(let p, let m) = RequestRouting.decide(open, host: "api.test", port: 443, path: "/v1%2Fadmin/") else {
            Issue.record("refused"); return
        }
        #expect(p == "/v1%2Fadmin/")
        #expect(m.route == nil)
    }

    @Test func keptEscapedSlashInsideTheSameRouteIsForwarded() {
        guard case .routed(let p, let m) = decide("/files/a%2fb") else { Issue.record("refused"); return }
        #expect(p == "/files/a%2Fb")
        #expect(m.label == "r3")
    }
}
