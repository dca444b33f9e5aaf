import ArgumentParser
import Foundation
import ProxyConfig
import ProxyServer

@main
struct MTLSProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mtls-proxy",
        abstract: "A forward HTTP proxy that re-originates requests over TLS, presenting a client certificate per route.",
        discussion: """
        Environment: MTLS_PROXY_CONFIG (config file), MTLS_PROXY_LISTEN (overrides [proxy] listen),
        MTLS_PROXY_LOG_LEVEL (overrides [log] level).
        """,
        subcommands: [Run.self, Check.self, Certs.self, Explain.self, Health.self, CA.self],
        defaultSubcommand: Run.self
    )
}

struct ConfigOption: ParsableArguments {
    @Option(name: .shortAndLong, help: "Config file (default: $MTLS_PROXY_CONFIG, else ./proxy.conf, else /etc/mtls-proxy/proxy.conf).")
    var config: String?

    var environment: [String: String] { ProcessInfo.processInfo.environment }

    var path: String { config ?? EnvironmentOverrides.configPath(environment) ?? ConfigLoader.defaultPath() }

    func loadConfiguration() throws -> ProxyConfiguration {
        do {
            return try ConfigLoader.load(file: path, environment: environment)
        } catch let error as ConfigError {
            printError("mtls-proxy: \(error.description)")
            throw ExitCode(1)
        }
    }

    /// Loads and validates the config and every certificate and key it names, or prints why not and exits 1.
    func loadRuntime() throws -> ProxyRuntime {
        let configuration = try loadConfiguration()
        do {
            return try ProxyRuntime(config: configuration)
        } catch let error as ConfigError {
            printError("mtls-proxy: \(error.description)")
            throw ExitCode(1)
        }
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

func formatDate(_ epoch: Int) -> String { UTCTime.readable(epoch, seconds: false) }

func daysLeft(_ seconds: Int) -> String {
    seconds < 0 ? "expired" : String(seconds / 86_400)
}

/// Left-aligned columns, two spaces apart.
func table(_ rows: [[String]]) -> String {
    guard let width = rows.map(\.count).max() else { return "" }
    var widths = [Int](repeating: 0, count: width)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { i, cell in
            i == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count)
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}
