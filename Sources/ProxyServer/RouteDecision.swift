import HTTP1
import ProxyConfig

/// The decision for one forwarded request: its canonical path, then the route for it. Pure; the data path
/// (and `explain`) call it with the request's canonical host, port and raw path, and forward exactly the path
/// that was routed.
public enum RequestRouting {
    public enum Outcome: Sendable, Equatable {
        /// Route on, and forward, `path` (replacing the path the client sent; the query stays as sent).
        case routed(path: String, match: RouteMatch)
        /// 400: the path has a spelling some server would read as another path. `match` is the route the
        /// relaxed spelling would reach, when a route or `[upstream]` setting could allow it but does not.
        case refused(PathRefusal, match: RouteMatch?)
    }

    /// The strict canonical path is routed when there is one. A path refused only for forms a route may relax
    /// (`//`, `%2F`, `%5C`) is normalised with those relaxations, routed, and accepted only if the route it
    /// reaches allows every relaxation used: the route decided on exactly the path that is forwarded.
    ///
    /// A routed path is then read the way other servers read it (`PathNormalizer.otherReadings`): if one of
    /// those readings reaches another route, the path is refused, since the upstream might be such a server.
    public static func decide(_ router: Router, host: String, port: Int, path: Substring) -> Outcome {
        let outcome = route(router, host: host, port: port, path: path)
        guard case .routed(let routed, let match) = outcome else { return outcome }
        for other in PathNormalizer.otherReadings(of: routed) where router.match(host: host, port: port, path: other.path[...]).route != match.route {
            return .refused(other.refusal, match: match)
        }
        return outcome
    }

    static func route(_ router: Router, host: String, port: Int, path: Substring) -> Outcome {
        let refusal: PathRefusal
        switch PathNormalizer.normalize(path) {
        case .success(let canonical):
            return .routed(path: canonical.path, match: router.match(host: host, port: port, path: canonical.path[...]))
        case .failure(let r):
            refusal = r
        }
        guard refusal.relaxation != nil else { return .refused(refusal, match: nil) }
        let relaxed: PathNormalizer.Canonical
        switch PathNormalizer.normalize(path, allowing: .all) {
        case .success(let r): relaxed = r
        case .failure(let notRelaxable): return .refused(notRelaxable, match: nil)  // e.g. a dot segment behind %2F
        }
        let match = router.match(host: host, port: port, path: relaxed.path[...])
        let allowed = relaxations(match.pathRules)
        if allowed.isSuperset(of: relaxed.used) {
            return .routed(path: relaxed.path, match: match)
        }
        // Name the first form this route does not allow.
        if case .failure(let notAllowed) = PathNormalizer.normalize(path, allowing: allowed) { return .refused(notAllowed, match: match) }
        return .refused(refusal, match: match)
    }

    /// The relaxations a route's (or `[upstream]`'s) path rules allow.
    public static func relaxations(_ rules: PathRules) -> PathNormalizer.Relaxations {
        var r: PathNormalizer.Relaxations = []
        if rules.mergeSlashes { r.insert(.mergeSlashes) }
        if rules.escapedSlashes == .keep { r.insert(.keepEscapedSlashes) }
        return r
    }

    /// The 400 for a refused path: what was refused and how to relax it when that is possible. Never quotes
    /// the request (its query may hold secrets).
    public static func badRequest(_ refusal: PathRefusal, match: RouteMatch?) -> ProxyErrorResponse {
        var advice = "Send the path in its plain form (no dot segments, encoded or raw backslashes, // or %00); the proxy routes and forwards one canonical spelling."
        switch refusal {
        case .pathParameters:
            advice = "Send the path without ;parameters in a segment that decides the route; the proxy refuses a path that some servers would read as one another route matches."
        case .trailingDotReading:
            advice = "Send the path without dots or spaces at the end of a segment; the proxy refuses a path that some servers would trim into one another route matches."
        case .escapedSlashReading:
            advice = "Send the path with plain / separators; the proxy refuses a %2F or %5C that some servers would decode into a path another route matches."
        default: break
        }
        if let relaxation = refusal.relaxation, match?.action != .deny {
            let key = relaxation == .mergeSlashes ? "merge_slashes = true" : "escaped_slashes = \"keep\""
            let place = match?.route.map { "on \($0.label)" } ?? "in [upstream]"
            advice = "If the upstream needs this form, set \(key) \(place) in the proxy's config."
        }
        return ProxyErrorResponse(status: 400, errorType: .httpRequestError, details: "refused: \(refusal.description)", advice: advice)
    }
}

/// The answers for CONNECT tunnels that `Router.planTunnel` sends to interception.
public enum TunnelRouting {
    /// 403 when a tunnel needs interception and it is off: which routes need it, and the two ways out.
    public static func interceptionRequired(_ plan: TunnelPlan, host: String) -> ProxyErrorResponse {
        let http = "use an http:// URL (http://\(host)/...) with HTTP_PROXY, so the proxy makes the https connection"
        let enable = "enable interception ([intercept] in the config, `mtls-proxy ca init`) and make the workflow trust the local CA"
        if !plan.pathRoutes.isEmpty {
            let names = plan.pathRoutes.map { "\($0.label) (path \($0.pathPrefix ?? "/"))" }.joined(separator: ", ")
            return ProxyErrorResponse(
                status: 403, errorType: .httpRequestDenied,
                details: "\(host) has path-scoped routes that decide differently from \(plan.decision.label): \(names); a blind tunnel cannot apply them, so the tunnel needs interception",
                advice: "Either \(http) and routes each request by its path; or \(enable).")
        }
        if case .tls = plan.decision.action {
            return ProxyErrorResponse(
                status: 403, errorType: .httpRequestDenied,
                details: "\(host) has a tls route that checks the server beyond its CA chain (\(plan.decision.label): pins, pin-only, revocation or a required OCSP staple); a blind tunnel cannot apply them",
                advice: "Either \(http) and checks the server; or \(enable).")
        }
        let identity: String
        if case .mtls(let name) = plan.decision.action { identity = name } else { identity = "?" }
        return ProxyErrorResponse(
            status: 403, errorType: .httpRequestDenied,
            details: "\(host) has an mTLS route (identity \(identity)); a blind tunnel cannot add its client certificate",
            advice: "Either \(http) and presents the certificate; or \(enable).")
    }
}
