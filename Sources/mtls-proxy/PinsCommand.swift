import ArgumentParser
import HTTP1
import ProxyConfig
import ProxyServer
import TLS
#if canImport(Glibc)
import Glibc
#endif

struct Pins: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print SPKI pins (pin_spki_sha256) of certificates, from a PEM file or from a live connection made the way a route makes it.",
        discussion: """
        mtls-proxy pins --pem FILE           every certificate in FILE with its pin
        mtls-proxy pins https://HOST[:PORT]  connects as the route for HOST does (its connect address or DNS, its TLS \
        policy, CA bundle, client certificate and pins) and prints what the server presents, and whether the route \
        would accept it. Nothing is sent after the handshake.
        A pin is base64 of the SHA-256 of the certificate's DER SubjectPublicKeyInfo (RFC 7469).
        """)

    @OptionGroup var options: ConfigOption

    @Option(help: ArgumentHelp("A PEM file of certificates.", valueName: "file"))
    var pem: String?

    @Argument(help: "With no --pem: the upstream URL, e.g. https://api.example.com or http://api.example.com:8443")
    var url: String?

    @Option(help: "Connect and handshake timeout, e.g. 5s.")
    var timeout: String = "5s"

    func run() throws {
        if let pem {
            let chain: [Certificate]
            do {
                chain = try Certificate.loadPEMChain(path: pem)
            } catch let error as TLSSetupError {
                printError("mtls-proxy: \(error.description)")
                throw ExitCode(1)
            }
            for (i, cert) in chain.enumerated() { printCertificate(i, cert.subject, cert.issuer, cert.spkiPin) }
            return
        }
        guard let url else {
            printError("mtls-proxy: pins needs --pem FILE or a URL")
            throw ExitCode(64)
        }
        try live(url)
    }

    private func printCertificate(_ i: Int, _ subject: String, _ issuer: String, _ pin: String) {
        print("#\(i + 1) \(subject)")
        print("   issuer: \(issuer)")
        print("   pin-sha256: \"\(pin)\"")
    }

    private func live(_ url: String) throws {
        let runtime = try options.loadRuntime()
        let target: AbsoluteTarget
        do {
            target = try AbsoluteTarget.parse(url.hasPrefix("https://") ? "http://" + url.dropFirst(8) : url)
        } catch let error as HTTPParseError {
            printError("mtls-proxy: \(url): \(error.description)")
            throw ExitCode(2)
        }
        let port = target.explicitPort ?? 443
        let match = runtime.router.explain(host: target.host, port: port, path: target.path[...]).match
        guard match.action != .deny else {
            printError("mtls-proxy: \(match.label) denies \(target.host): the proxy would not connect")
            throw ExitCode(1)
        }
        guard case .context(let context) = runtime.context(for: match) else {
            printError("mtls-proxy: \(match.label): its identity has no currently valid certificate")
            throw ExitCode(1)
        }
        // The address the route dials: its connect address, else the host's (DNS), with the same guard.
        let address: IPAddress
        if let connect = match.connect, let ip = IPAddress(connect.host) {
            address = ip
        } else if let ip = IPAddress(target.host) ?? resolve(target.host) {
            if !match.allowPrivate, let reason = AddressPolicy.nonPublicReason(ip) {
                printError("mtls-proxy: \(target.host) resolves to \(ip), \(reason): the route does not allow it (allow_private)")
                throw ExitCode(1)
            }
            address = ip
        } else {
            printError("mtls-proxy: cannot resolve \(target.host)")
            throw ExitCode(1)
        }
        let dialPort = match.connect?.port ?? port
        let millis = TimeSpan.parse(timeout)?.milliseconds ?? 5000
        let outcome = PeerChainProbe.run(context: context, host: target.host, port: dialPort, address: address, timeoutMillis: millis)
        print("route: \(match.label); connected to \(address):\(dialPort) as \(target.host)\(outcome.version.map { ", \($0)" } ?? "")")
        for (i, cert) in outcome.chain.enumerated() { printCertificate(i, cert.subject, cert.issuer, cert.pin) }
        if let failure = outcome.failure {
            print("the route would refuse this server: \(failure)")
            throw ExitCode(1)
        }
        print("the route accepts this server")
    }

    private func resolve(_ host: String) -> IPAddress? {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &result) == 0, let first = result else { return nil }
        defer { freeaddrinfo(result) }
        var node: UnsafeMutablePointer<addrinfo>? = first
        while let n = node {
            if let sa = n.pointee.ai_addr {
                if n.pointee.ai_family == AF_INET {
                    let bytes = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in withUnsafeBytes(of: p.pointee.sin_addr) { Array($0) } }
                    return IPAddress(bytes: bytes)
                } else if n.pointee.ai_family == AF_INET6 {
                    let bytes = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in withUnsafeBytes(of: p.pointee.sin6_addr) { Array($0) } }
                    return IPAddress(bytes: bytes)
                }
            }
            node = n.pointee.ai_next
        }
        return nil
    }
}
