import ArgumentParser
import Logging
import ProxyConfig
import ProxyServer
import TLS
#if canImport(Glibc)
import Glibc
#endif

@main
struct MTLSProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mtls-proxy",
        abstract: "A forward HTTP proxy that re-originates requests over TLS, presenting a client certificate per route.",
        subcommands: [Run.self, Check.self],
        defaultSubcommand: Run.self
    )
}

struct ConfigOption: ParsableArguments {
    @Option(name: .shortAndLong, help: "Config file (default: ./proxy.conf, else /etc/mtls-proxy/proxy.conf).")
    var config: String?

    var path: String { config ?? ConfigLoader.defaultPath() }

    /// Loads and validates the config and every certificate and key it names, or prints why not and exits 1.
    func loadRuntime() throws -> ProxyRuntime {
        do {
            let configuration = try ConfigLoader.load(file: path)
            return try ProxyRuntime(config: configuration)
        } catch let error as ConfigError {
            printError("mtls-proxy: \(error.description)")
            throw ExitCode(1)
        }
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve: listen for plain HTTP and forward over TLS.")

    @OptionGroup var options: ConfigOption

    func run() throws {
        ProxyServer.prepareProcess()
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .info
            return handler
        }
        let logger = Logger(label: "mtls-proxy")
        let runtime = try options.loadRuntime()
        let server = ProxyServer(runtime: runtime, logger: logger)
        do {
            try server.bind()
        } catch {
            printError("mtls-proxy: \(error)")
            throw ExitCode(1)
        }
        let config = runtime.config
        var listen = config.proxy.listen
        listen.port = server.port
        for identity in config.identities {
            let list = runtime.credentials[identity.name] ?? []
            let active = runtime.activeCertificate(identity: identity.name)
            if let active {
                let leaf = list[active].leaf
                logger.info("identity \(identity.name): \(leaf.subject), serial \(leaf.serialHex), valid until \(formatDate(leaf.notAfter))")
            } else {
                logger.error("identity \(identity.name): no currently valid certificate; its routes will answer 502")
            }
        }
        logger.info("mtls-proxy listening on \(listen) with \(server.workerCount) worker(s), \(config.routes.count) route(s), config \(config.file)")
        server.run()
        logger.info("mtls-proxy stopped")
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate the config, load every certificate and key, and print each identity.")

    @OptionGroup var options: ConfigOption

    func run() throws {
        let runtime = try options.loadRuntime()
        let config = runtime.config
        print("config \(config.file): OK")
        print("listen \(config.proxy.listen), unmatched hosts: \(config.proxy.unmatched.rawValue), \(config.routes.count) route(s)")
        let now = currentEpochSeconds()
        for identity in config.identities {
            let list = runtime.credentials[identity.name] ?? []
            let active = runtime.activeCertificate(identity: identity.name, at: now)
            print("")
            print("identity \(identity.name)\(active == nil ? "  (NO VALID CERTIFICATE)" : "")")
            for (i, credential) in list.enumerated() {
                let leaf = credential.leaf
                let days = (leaf.notAfter - now) / 86_400
                print("  certificate \(credential.source.cert)\(i == active ? "  [active]" : "")")
                print("    subject     \(leaf.subject)")
                print("    issuer      \(leaf.issuer)")
                print("    serial      \(leaf.serialHex)")
                print("    valid       \(formatDate(leaf.notBefore)) to \(formatDate(leaf.notAfter)) (\(days) days left)")
                print("    key         \(credential.key.algorithm)")
                print("    sha256      \(leaf.sha256Fingerprint)")
            }
        }
        for route in config.routes {
            print("")
            print("\(route.label): \(route.action)\(route.pathPrefix.map { ", path \($0)" } ?? "")\(route.port.map { ", port \($0)" } ?? "")\(route.connect.map { ", connect \($0)" } ?? "")")
        }
        if config.identities.contains(where: { runtime.activeCertificate(identity: $0.name, at: now) == nil }) {
            throw ExitCode(1)
        }
    }
}

func printError(_ message: String) {
    var bytes = Array((message + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}

func formatDate(_ epoch: Int) -> String {
    var t = time_t(epoch)
    var parts = tm()
    gmtime_r(&t, &parts)
    func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday)) \(two(parts.tm_hour)):\(two(parts.tm_min)) UTC"
}
