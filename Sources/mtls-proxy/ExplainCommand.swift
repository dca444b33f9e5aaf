import ArgumentParser
import HTTP1
import ProxyConfig
import ProxyServer

struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Say what the proxy would do with a request, without sending it.",
        discussion: "Which route matches and why, what would happen (deny, TLS, or mutual TLS with which certificate), the upstream address, trust settings and timeouts. Exits 0 even for a denied request; non-zero only for a bad config or URL.")

    @OptionGroup var options: ConfigOption

    @Argument(help: "The URL as the workflow would send it through the proxy, e.g. http://api.example.com/v1/x (with --method CONNECT: host:port)")
    var url: String

    @Option(help: "The request method.")
    var method: String = "GET"

    func run() throws {
        let runtime = try options.loadRuntime()
        if method.uppercased() == "CONNECT" { return try explainTunnel(runtime) }
        let target: AbsoluteTarget
        do {
            target = try AbsoluteTarget.parse(url)
        } catch let error as HTTPParseError {
            printError("mtls-proxy: \(url): \(error.description)")
            throw ExitCode(2)
        }
        let port = target.explicitPort ?? 443
        // The same decision the data path makes: canonical path first, then the router, which says why.
        let router = runtime.router
        var lines: [(String, String)] = [("request", "\(method.uppercased()) \(url)")]
        if refusesNumericHost(target.host, &lines) { return }
        if refusesOwnListener(runtime.config, target, &lines) { return }
        let canonicalPath: String
        switch RequestRouting.decide(router, host: target.host, port: port, path: target.path) {
        case .refused(let refusal, let decided):
            let response = RequestRouting.badRequest(refusal, match: decided)
            lines.append(("outcome", "\(response.status): the proxy refuses the path (Proxy-Status: \(response.errorType.rawValue)), \(response.details), and sends nothing upstream"))
            if !response.advice.isEmpty { lines.append(("advice", response.advice)) }
            printLines(lines)
            return
        case .routed(let path, _):
            canonicalPath = path
        }
        let canonical = target.withPath(canonicalPath)
        let explanation = router.explain(host: target.host, port: port, path: canonicalPath[...])
        let match = explanation.match
        lines.append(("path", canonicalPath))
        lines.append(("upstream", "https://\(canonical.hostHeader(port: port, defaultPort: 443))\(canonical.path)  (Host: \(canonical.hostHeader(port: port, defaultPort: 443)))"))
        for skipped in explanation.skipped {
            lines.append(("skipped", "\(skipped.route.label): \(skipped.reason)"))
        }
        lines.append(("route", "\(match.label): \(match.reason)"))
        switch match.action {
        case .deny:
            lines.append(("outcome", "deny: the proxy answers 403 (Proxy-Status: http_request_denied) and sends nothing upstream"))
        case .tls:
            lines.append(("outcome", "TLS without a client certificate"))
        case .mtls(let identity):
            if let index = runtime.activeCertificate(identity: identity), let credential = runtime.credentials[identity]?[index] {
                let leaf = credential.leaf
                lines.append(("outcome", "mutual TLS presenting identity \(identity)"))
                lines.append(("certificate", "#\(index + 1) serial \(leaf.serialHex), \(leaf.subject), valid until \(formatDate(leaf.notAfter)) (\(credential.source.cert))"))
            } else {
                lines.append(("outcome", "identity \(identity) has no currently valid certificate: the proxy answers 502 (Proxy-Status: proxy_configuration_error)"))
            }
        }
        if match.action != .deny {
            let dial = match.connect.map { "\($0) (the route's connect address)" } ?? "\(target.host):\(port), resolved by DNS"
            lines.append(("dial", dial))
            let trust = match.trust.caFile.map { "CA bundle \($0)" } ?? "the system trust store"
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
        if target.scheme == "https" {
            let authority = target.host.contains(":") ? "[\(target.host)]:\(port)" : "\(target.host):\(port)"
            lines.append(("note", "this is a request sent to the proxy as it is (GET https://...); most clients send an https:// URL as CONNECT \(authority) through HTTPS_PROXY: see mtls-proxy explain --method CONNECT \(authority)"))
        }
        printLines(lines)
    }

    /// The data path refuses a forward request for one of the proxy's own listeners (an address missing from
    /// NO_PROXY) before routing, with the port the client meant (80 for a URL without one); so does `explain`.
    private func refusesOwnListener(_ config: ProxyConfiguration, _ target: AbsoluteTarget, _ lines: inout [(String, String)]) -> Bool {
        let port = target.explicitPort ?? 80
        guard let own = config.ownListener(host: target.host, port: port) else { return false }
        let what = own.upstreamURL.map { "\(own.name), the sidecar listener for \($0)" } ?? own.name
        lines.append(("outcome", "403 (Proxy-Status: http_request_denied): \(target.host):\(port) is this proxy's own address (\(what)); a request for it that reaches the proxy came through HTTP_PROXY instead of straight to the listener"))
        lines.append(("advice", "Connect to \(own.listen) directly: add it to NO_PROXY (and no_proxy), for example NO_PROXY=127.0.0.1,localhost,::1."))
        printLines(lines)
        return true
    }

    /// The data path refuses legacy numeric and IPv4-mapped hosts before routing; so does `explain`.
    private func refusesNumericHost(_ host: String, _ lines: inout [(String, String)]) -> Bool {
        guard AddressPolicy.isNonCanonicalNumericHost(host) else { return false }
        lines.append(("outcome", "400: \(host) is a non-canonical numeric address; write IPv4 addresses as a.b.c.d (the proxy sends nothing upstream)"))
        printLines(lines)
        return true
    }

    /// CONNECT host:port: the host-level route decides; path-scoped routes may require interception.
    private func explainTunnel(_ runtime: ProxyRuntime) throws {
        let authority: (host: String, port: Int?)
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
        let router = runtime.router
        let plan = router.planTunnel(host: authority.host, port: port)
        let shownHost = authority.host.contains(":") ? "[\(authority.host)]" : authority.host
        var lines: [(String, String)] = [("request", "CONNECT \(shownHost):\(port)")]
        if refusesNumericHost(authority.host, &lines) { return }
        for skipped in router.explain(host: authority.host, port: port, path: nil).skipped {
            lines.append(("skipped", "\(skipped.route.label): \(skipped.reason)"))
        }
        lines.append(("route", "\(plan.decision.label): \(plan.decision.reason)"))
        for route in plan.pathRoutes {
            lines.append(("path route", "\(route.label) (path \(route.pathPrefix ?? "/")): \(route.action), decides requests inside the tunnel"))
        }
        switch plan.kind {
        case .deny:
            lines.append(("outcome", "deny: the proxy answers 403 and opens no tunnel"))
        case .blindTunnel:
            lines.append(("outcome", "blind tunnel: bytes relayed as they are, the workflow verifies the server itself"))
        case .intercept where runtime.config.intercept != nil:
            lines.append(("outcome", "intercepted: the proxy terminates TLS with the local CA and routes each request inside by its path"))
        case .intercept:
            let response = TunnelRouting.interceptionRequired(plan, host: authority.host)
            lines.append(("outcome", "403 (interception is off): \(response.details)"))
        }
        printLines(lines)
    }

    private func printLines(_ lines: [(String, String)]) {
        let width = lines.map(\.0.count).max() ?? 0
        for (label, text) in lines {
            print(label + String(repeating: " ", count: width - label.count + 2) + text)
        }
    }
}
