import ArgumentParser
import HTTP1
import ProxyConfig
import ProxyServer

struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Say what the proxy would do with a request, without sending it.",
        discussion: "Which route matches and why, what would happen (deny, TLS, or mutual TLS with which certificate), the upstream address, trust settings and timeouts. Exits 0 even for a denied request; non-zero only for a bad config or URL.")

    @OptionGroup var options: ConfigOption

    @Argument(help: "The URL as the workflow would send it through the proxy, e.g. http://api.example.com/v1/x")
    var url: String

    @Option(help: "The request method.")
    var method: String = "GET"

    func run() throws {
        let runtime = try options.loadRuntime()
        let config = runtime.config
        let target: AbsoluteTarget
        do {
            target = try AbsoluteTarget.parse(url)
        } catch let error as HTTPParseError {
            printError("mtls-proxy: \(url): \(error.description)")
            throw ExitCode(2)
        }
        let port = target.explicitPort ?? 443
        let match = runtime.router.match(host: target.host, port: port, path: target.path)
        var lines: [(String, String)] = [("request", "\(method.uppercased()) \(url)")]
        lines.append(("upstream", "https://\(target.hostHeader(port: port, defaultPort: 443))\(target.pathAndQuery)  (Host: \(target.hostHeader(port: port, defaultPort: 443)))"))
        for route in config.routes {
            if route == match.route { break }
            lines.append(("skipped", "\(route.label): \(Self.mismatch(route, host: target.host, port: port, path: String(target.path)))"))
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
            lines.append(("trust", "server certificate verified against \(trust); \(hostCheck); TLS \(match.trust.minTLS.rawValue) or later"))
            lines.append(("timeouts", "connect \(match.timeouts.connect), response \(match.timeouts.response), idle \(match.timeouts.idle)"))
        }
        let width = lines.map(\.0.count).max() ?? 0
        for (label, text) in lines {
            print(label + String(repeating: " ", count: width - label.count + 2) + text)
        }
    }

    static func mismatch(_ route: Route, host: String, port: Int, path: String) -> String {
        if !route.host.matches(host) { return "host \(route.host) does not match \(host)" }
        if let p = route.port, p != port { return "port \(p) does not match \(port)" }
        if let prefix = route.pathPrefix, !path.hasPrefix(prefix) { return "path prefix \(prefix) does not match \(path)" }
        return "does not match"
    }
}
