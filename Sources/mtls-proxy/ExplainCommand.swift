import ArgumentParser
import HTTP1
import ProxyConfig
import ProxyServer

struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Say what the proxy would do with a request, without sending it.",
        discussion: """
        Which route matches and why, what would happen (deny, TLS, or mutual TLS with which certificate), the \
        upstream address, trust settings and timeouts. For an https:// URL, both ways a client can send it: \
        as CONNECT host:443 through HTTPS_PROXY (a blind tunnel, interception, or 403 and why), and spelled \
        http:// through HTTP_PROXY. Exits 0 even for a denied request; non-zero only for a bad config or URL.
        """)

    @OptionGroup var options: ConfigOption

    @Argument(help: "The URL as the workflow would send it through the proxy, e.g. http://api.example.com/v1/x (with --method CONNECT: host:port)")
    var url: String

    @Option(help: "The request method.")
    var method: String = "GET"

    typealias Lines = [(String, String)]

    func run() throws {
        let runtime = try options.loadRuntime()
        if method.uppercased() == "CONNECT" { return try explainTunnel(runtime) }
        let target = try parse(url)
        guard target.scheme == "https" else {
            printLines([("request", "\(method.uppercased()) \(url)")] + forward(runtime, target))
            return
        }
        // Most clients send an https:// URL as CONNECT through HTTPS_PROXY, and do TLS themselves inside the
        // tunnel; the same URL spelled http:// goes through HTTP_PROXY and the proxy makes the TLS connection.
        let port = target.explicitPort ?? 443
        let authority = "\(bracketed(target.host)):\(port)"
        let httpSpelling = "http://\(bracketed(target.host))\(target.explicitPort.map { ":\($0)" } ?? "")\(target.path)"
        printLines([("request", "\(method.uppercased()) \(url)")])
        print("")
        print("HTTPS_PROXY: CONNECT \(authority), then TLS from the client inside the tunnel (what most clients send for an https:// URL)")
        printLines(tunnel(runtime, host: target.host, port: port))
        print("")
        print("HTTP_PROXY: GET \(httpSpelling) (the same URL spelled http://: the proxy makes the TLS connection)")
        let http = try parse(httpSpelling)
        printLines(forward(runtime, http) + [
            ("note", "a client that sends the https:// URL itself to the proxy (GET https://..., not CONNECT) gets the same as this http:// spelling"),
        ])
    }

    private func parse(_ text: String) throws -> AbsoluteTarget {
        try checkCharacters(text)
        do {
            return try AbsoluteTarget.parse(text)
        } catch let error as HTTPParseError {
            printError("mtls-proxy: \(text): \(error.description)")
            throw ExitCode(2)
        }
    }

    /// The listener refuses (400) a request line whose target has a space, a control character or a byte beyond
    /// ASCII: so does `explain`, without repeating the URL (a control character would reach the terminal).
    private func checkCharacters(_ text: String) throws {
        do {
            try HeadParser.checkTargetCharacters(text.utf8)
        } catch let error as HTTPParseError {
            printError("mtls-proxy: \(error.description) in a URL; the listener answers 400 to such a request. "
                       + "Percent-encode the others as a client does (a space is %20, é is %C3%A9).")
            throw ExitCode(2)
        }
    }

    private func bracketed(_ host: String) -> String { host.contains(":") ? "[\(host)]" : host }

    /// A forward request (http://, or https:// sent as it is): the same decision the data path makes.
    private func forward(_ runtime: ProxyRuntime, _ target: AbsoluteTarget) -> Lines {
        let port = target.explicitPort ?? 443
        // The same decision the data path makes: canonical path first, then the router, which says why.
        let router = runtime.router
        var lines: Lines = []
        if let refusal = numericHostRefusal(target.host) { return [refusal] }
        if let refusal = ownListenerRefusal(runtime.config, target) { return refusal }
        let canonicalPath: String
        switch RequestRouting.decide(router, host: target.host, port: port, path: target.path) {
        case .refused(let refusal, let decided):
            let response = RequestRouting.badRequest(refusal, match: decided)
            lines.append(("outcome", "\(response.status): the proxy refuses the path (Proxy-Status: \(response.errorType.rawValue)), \(response.details), and sends nothing upstream"))
            if !response.advice.isEmpty { lines.append(("advice", response.advice)) }
            return lines
        case .routed(let path, _):
            canonicalPath = path
        }
        let canonical = target.withPath(canonicalPath)
        let explanation = router.explain(host: target.host, port: port, path: canonicalPath[...])
        let match = explanation.match
        lines.append(("path", canonicalPath))
        lines.append(("upstream", "https://\(canonical.hostHeader(port: port, defaultPort: 443))\(canonical.path)  (Host: \(canonical.hostHeader(port: port, defaultPort: 443)))"))
        appendSkipped(explanation.skipped, to: &lines)
        lines.append(("route", "\(match.label): \(match.reason)"))
        switch match.action {
        case .deny:
            lines.append(("outcome", "deny: the proxy answers 403 (Proxy-Status: http_request_denied) and sends nothing upstream"))
        case .tls:
            lines.append(("outcome", "TLS without a client certificate"))
        case .mtls(let identity):
            lines += presentation(runtime, identity: identity)
        }
        if match.action != .deny {
            lines.append(("egress", Self.egressText(match.egress, host: target.host, port: port)))
            lines.append(("protocol", "\(match.httpProtocol.rawValue): \(match.httpProtocol.phrase)"))
            if match.httpProtocol != .http11 {
                let ping = match.timeouts.h2PingInterval.map {
                    "an idle HTTP/2 connection silent \($0) is sent a PING; no answer within \(match.timeouts.h2PingTimeout) retires it"
                } ?? "off: idle HTTP/2 connections are not checked (h2_ping_interval = \"off\")"
                lines.append(("h2 ping", ping))
            }
            if match.egress == .direct {
                let dial = match.connect.map { "\($0) (the route's connect address)" } ?? "\(target.host):\(port), resolved by DNS"
                lines.append(("dial", dial))
            }
            let trust = match.trust.caFile.map { "CA bundle \(PathDisplay(configPath: runtime.config.file).path($0))" } ?? "the system trust store"
            let hostCheck = IPAddress(target.host) != nil ? "IP address \(target.host)" : "host name \(target.host), sent as SNI"
            let t = match.trust
            let versions = t.minTLS == t.maxTLS ? "TLS \(t.minTLS.rawValue) only" : "TLS \(t.minTLS.rawValue) to \(t.maxTLS.rawValue)"
            if t.verify == .pinOnly {
                lines.append(("trust", "pin-only: no CA chain, host name or dates checked; only the server's own key (pin_spki_sha256, \(t.pins.count) pin(s)); \(versions)"))
            } else {
                lines.append(("trust", "server certificate verified against \(trust); \(hostCheck); \(versions)"))
            }
            lines.append(("tls policy", TrustDescription.policy(t)))
            if t.verify == .chain {
                lines.append(("pins", TrustDescription.pins(t)))
                lines.append(("revocation", TrustDescription.revocation(t)))
                lines.append(("ocsp staple", TrustDescription.ocsp(t)))
            }
            lines.append(("timeouts", "connect \(match.timeouts.connect), response \(match.timeouts.response), idle \(match.timeouts.idle)"))
        }
        return lines
    }

    /// "mutual TLS presenting identity X" and the certificate, or the 502 an identity without one answers.
    private func presentation(_ runtime: ProxyRuntime, identity: String) -> Lines {
        guard let index = runtime.activeCertificate(identity: identity), let credential = runtime.credentials[identity]?[index] else {
            return [("outcome", "identity \(identity) has no currently valid certificate: the proxy answers 502 (Proxy-Status: proxy_configuration_error)")]
        }
        let leaf = credential.leaf
        return [("outcome", "mutual TLS presenting identity \(identity)"),
                ("certificate", "#\(index + 1) serial \(leaf.serialHex), \(leaf.subject), valid until \(formatDate(leaf.notAfter)) (\(PathDisplay(configPath: runtime.config.file).path(credential.source.cert)))")]
    }

    /// The routes passed over, each with why. In a large table most are for other hosts: past
    /// `hostSkipsShown` of those, they are counted rather than listed (every route for the request's host is).
    private func appendSkipped(_ skipped: [RouteExplanation.Skipped], to lines: inout [(String, String)]) {
        let otherHosts = skipped.filter { if case .host = $0.reason { return true } else { return false } }.count
        let listAll = otherHosts <= Self.hostSkipsShown
        for s in skipped {
            if case .host = s.reason, !listAll { continue }
            lines.append(("skipped", "\(s.route.label): \(s.reason)"))
        }
        if !listAll { lines.append(("skipped", "\(otherHosts) routes for other hosts")) }
    }

    static let hostSkipsShown = 20

    /// The data path refuses a forward request for one of the proxy's own listeners (an address missing from
    /// NO_PROXY) before routing, with the port the client meant (80 for a URL without one); so does `explain`.
    private func ownListenerRefusal(_ config: ProxyConfiguration, _ target: AbsoluteTarget) -> Lines? {
        let port = target.explicitPort ?? 80
        guard let own = config.ownListener(host: target.host, port: port) else { return nil }
        let what = own.upstreamURL.map { "\(own.name), the sidecar listener for \($0)" } ?? own.name
        return [("outcome", "403 (Proxy-Status: http_request_denied): \(target.host):\(port) is this proxy's own address (\(what)); a request for it that reaches the proxy came through HTTP_PROXY instead of straight to the listener"),
                ("advice", "Connect to \(own.listen) directly: add it to NO_PROXY (and no_proxy), for example NO_PROXY=127.0.0.1,localhost,::1.")]
    }

    /// The data path refuses legacy numeric and IPv4-mapped hosts before routing; so does `explain`.
    private func numericHostRefusal(_ host: String) -> (String, String)? {
        guard AddressPolicy.isNonCanonicalNumericHost(host) else { return nil }
        return ("outcome", "400: \(host) is a non-canonical numeric address; write IPv4 addresses as a.b.c.d (the proxy sends nothing upstream)")
    }

    /// CONNECT host:port: the host-level route decides; path-scoped routes may require interception.
    private func explainTunnel(_ runtime: ProxyRuntime) throws {
        let authority: (host: String, port: Int?)
        try checkCharacters(url)
        do {
            authority = try AbsoluteTarget.parseAuthority(Array(url.utf8))
        } catch let error as HTTPParseError {
            printError("mtls-proxy: \(url): \(error.description)")
            throw ExitCode(2)
        }
        guard let port = authority.port else {
            printError("mtls-proxy: \(url): CONNECT needs host:port")
            throw ExitCode(2)
        }
        printLines([("request", "CONNECT \(bracketed(authority.host)):\(port)")] + tunnel(runtime, host: authority.host, port: port))
    }

    /// What a CONNECT to host:port carrying TLS gets: the data path's decision (`TunnelTLSOutcome`), with the
    /// routes that decided it.
    private func tunnel(_ runtime: ProxyRuntime, host: String, port: Int) -> Lines {
        if let refusal = numericHostRefusal(host) { return [refusal] }
        let router = runtime.router
        var lines: Lines = []
        appendSkipped(router.explain(host: host, port: port, path: nil).skipped, to: &lines)
        let plan = router.planTunnel(host: host, port: port)
        lines.append(("route", "\(plan.decision.label): \(plan.decision.reason)"))
        for route in plan.pathRoutes {
            lines.append(("path route", "\(route.label) (path \(route.pathPrefix ?? "/")): \(route.action), decides requests inside the tunnel"))
        }
        let outcome = TunnelTLSOutcome.decide(target: "\(bracketed(host)):\(port)", router: router,
                                              interceptionEnabled: runtime.config.intercept != nil)
        switch outcome.kind {
        case .blindTunnel:
            lines.append(("outcome", "blind tunnel: bytes relayed as they are; the workflow verifies the server itself, and no client certificate is added"))
            lines.append(("egress", Self.egressText(plan.decision.egress, host: host, port: port)))
        case .intercepted(let identity):
            let presents = identity.map { "; requests routed to identity \($0) present its certificate" } ?? ""
            lines.append(("outcome", "intercepted: the proxy answers 200, terminates the workflow's TLS with the local CA (the workflow must trust it: mtls-proxy ca --pem) and routes each request inside by its path\(presents)"))
            if let identity, case .mtls = plan.decision.action {
                lines += presentation(runtime, identity: identity).filter { $0.0 == "certificate" }
            }
        case .refused(let response, let afterOpening):
            let status = "\(response.status) (Proxy-Status: \(response.errorType.rawValue))"
            lines.append(("outcome", afterOpening
                ? "the tunnel opens (200), then the TLS inside is refused with \(status): \(response.details)"
                : "\(status), no tunnel: \(response.details)"))
            if !response.advice.isEmpty { lines.append(("advice", response.advice)) }
        }
        return lines
    }

    /// How the connection leaves the host: direct, or which corporate proxy, with which credentials file
    /// (never its content), and what the SSRF guard can and cannot see then.
    static func egressText(_ egress: Egress, host: String, port: Int) -> String {
        guard case .proxy(let proxy) = egress else { return "direct" }
        let credentials = proxy.credentialsFile.map { "Proxy-Authorization from \($0)" } ?? "no credentials"
        let authority = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        let guardNote = IPAddress(host) != nil ? "the SSRF guard checks the IP address first"
            : "the corporate proxy resolves and dials \(host): the SSRF guard does not see that address"
        return "through the corporate proxy \(proxy) (CONNECT \(authority), \(credentials)); TLS runs end to end inside the tunnel; \(guardNote)"
    }

    private func printLines(_ lines: Lines) {
        let width = lines.map(\.0.count).max() ?? 0
        for (label, text) in lines {
            print(label + String(repeating: " ", count: width - label.count + 2) + text)
        }
    }
}
