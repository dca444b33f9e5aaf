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
        Environment:
          MTLS_PROXY_CONFIG     the config file (when --config is not given)
          MTLS_PROXY_LISTEN     overrides [proxy] listen
          MTLS_PROXY_LOG_LEVEL  overrides [log] level

        Shell completion: mtls-proxy --generate-completion-script bash (or zsh, fish).
        """,
        version: BuildInfo.current.text,
        subcommands: [Run.self, Check.self, Certs.self, Explain.self, Health.self, CA.self, CSR.self, Pins.self, Version.self],
        defaultSubcommand: Run.self
    )

    /// `-V` as the only argument prints the version, like `--version` and `version` (argument-parser only
    /// knows `--version`, and `run`, the default subcommand, would take `-V` for one of its own options).
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments == ["-V"] {
            print(BuildInfo.current.text)
            return
        }
        if let first = arguments.first, let message = unknownSubcommand(first) {
            printError(message)
            exit(withError: ExitCode(64))
        }
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}

/// A first argument that is no subcommand: `run`, the default, takes no arguments, so argument-parser would
/// answer "Unexpected argument" with run's usage, which hides the typo. Names it instead, with the nearest
/// subcommand when one is close.
func unknownSubcommand(_ word: String) -> String? {
    guard !word.hasPrefix("-") else { return nil }
    let names = MTLSProxyCommand.configuration.subcommands.map { $0._commandName }
    guard !names.contains(word), word != "help" else { return nil }
    var message = "mtls-proxy: unknown subcommand '\(word)'"
    if let nearest = names.min(by: { editDistance($0, word) < editDistance($1, word) }), editDistance(nearest, word) <= 2 {
        message += "; did you mean '\(nearest)'?"
    }
    return message + "\nSubcommands: \(names.joined(separator: ", ")) (see mtls-proxy --help)"
}

/// Levenshtein distance, for suggestions.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    var previous = Array(0...b.count)
    for i in 1...max(a.count, 1) where !a.isEmpty {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in 1...max(b.count, 1) where !b.isEmpty {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = current
    }
    return previous[b.count]
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the version, the commit it was built from, and the Swift, OpenSSL and libevent versions.",
        discussion: "The same as --version and -V. The commit is \"unknown\" in a binary built without scripts/build.")

    func run() {
        print(BuildInfo.current.text)
    }
}

struct ConfigOption: ParsableArguments {
    @Option(name: .shortAndLong, help: ArgumentHelp(
        "The config file (default: $MTLS_PROXY_CONFIG, else ./proxy.conf, else /etc/mtls-proxy/proxy.conf).",
        valueName: "file"))
    var config: String?

    var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// The config file in use: --config, else $MTLS_PROXY_CONFIG, else the first of the search paths that
    /// exists (the first search path when none does; `loadConfiguration` says so).
    var path: String {
        config ?? EnvironmentOverrides.configPath(environment) ?? ConfigLoader.defaultPath() ?? ConfigLoader.searchPaths[0]
    }

    /// The places looked at when no config file is named and none of the default places has one, or nil.
    var placesLookedAt: [[String]]? {
        guard config == nil && EnvironmentOverrides.configPath(environment) == nil && ConfigLoader.defaultPath() == nil else {
            return nil
        }
        var places = [["--config", "not given"], ["$" + EnvironmentOverrides.configVariable, "not set"]]
        for place in ConfigLoader.searchPaths {
            let absolute = ConfigLoader.absolutePath(place)
            places.append([absolute == place ? place : "./\(place) (\(absolute))", "not found"])
        }
        return places
    }

    /// The config, or every mistake in it.
    func configuration() -> Result<ProxyConfiguration, ConfigError> {
        if let places = placesLookedAt {
            return .failure(ConfigError(file: path, key: "", message: "no config file found; looked at "
                + places.map { "\($0[0]) (\($0[1]))" }.joined(separator: ", ")))
        }
        do {
            return .success(try ConfigLoader.load(file: path, environment: environment))
        } catch let error as ConfigError {
            return .failure(error)
        } catch {
            return .failure(ConfigError(file: path, key: "", message: "\(error)"))
        }
    }

    /// The config and every certificate and key it names, or what is wrong.
    func runtime() -> Result<ProxyRuntime, ConfigError> {
        configuration().flatMap { configuration in
            do {
                return .success(try ProxyRuntime(config: configuration))
            } catch let error as ConfigError {
                return .failure(error)
            } catch {
                return .failure(ConfigError(file: configuration.file, key: "", message: "\(error)"))
            }
        }
    }

    func loadConfiguration() throws -> ProxyConfiguration {
        if let places = placesLookedAt {
            printError("mtls-proxy: no config file found. Looked at:")
            for line in table(places).split(separator: "\n") { printError("  \(line)") }
            printError("Pass --config FILE, or set \(EnvironmentOverrides.configVariable).")
            throw ExitCode(1)
        }
        switch configuration() {
        case .success(let configuration): return configuration
        case .failure(let error):
            printConfigError(error)
            throw ExitCode(1)
        }
    }

    /// Loads and validates the config and every certificate and key it names, or prints why not and exits 1.
    func loadRuntime() throws -> ProxyRuntime {
        let configuration = try loadConfiguration()
        do {
            return try ProxyRuntime(config: configuration)
        } catch let error as ConfigError {
            printConfigError(error)
            throw ExitCode(1)
        }
    }
}

/// Every mistake on its own line; a count when there are several.
func printConfigError(_ error: ConfigError) {
    let paths = PathDisplay(configPath: error.file)
    for line in error.description.split(separator: "\n") { printError("mtls-proxy: \(paths.text(String(line)))") }
    if let hint = SyntaxHint.hint(for: error) { printError("mtls-proxy: \(hint)") }
    if error.all.count > 1 { printError("mtls-proxy: \(error.all.count) mistakes in \(error.file)") }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

func formatDate(_ epoch: Int) -> String { UTCTime.readable(epoch, seconds: false) }

func daysLeft(_ seconds: Int) -> String {
    seconds < 0 ? "expired" : String(seconds / 86_400)
}

/// "92 days left", or "expired" (never "expired days left").
func daysLeftPhrase(_ seconds: Int) -> String {
    seconds < 0 ? "expired" : "\(seconds / 86_400) days left"
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

/// `text` as one word for a POSIX shell, for commands printed to be copied: as it is when it holds only
/// characters no shell treats specially, else in single quotes.
func shellWord(_ text: String) -> String {
    let plain = !text.isEmpty && text.unicodeScalars.allSatisfy {
        ($0.isASCII && ($0.properties.isAlphabetic || $0.properties.numericType != nil)) || "/._-+:,@%=".unicodeScalars.contains($0)
    }
    return plain ? text : "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// How the command line shows the paths a config names. The loader keeps them absolute (a reload must find the
/// same files whatever the current folder) and spelled the short way (`FilePathSpelling`); for a config named by
/// a relative path (`--config conf/proxy.conf`), the command line shows them relative to the current folder, as
/// they were given: `pki/x.pem`. JSON reports keep them absolute.
struct PathDisplay {
    /// The current folder and a slash; nil when paths are shown as they are.
    private let prefix: String?

    init(configPath: String, currentFolder: String = FileManager.default.currentDirectoryPath) {
        prefix = (configPath.hasPrefix("/") || currentFolder.isEmpty || currentFolder == "/") ? nil : currentFolder + "/"
    }

    func path(_ path: String) -> String {
        guard let prefix, path.hasPrefix(prefix), path.count > prefix.count else { return path }
        return String(path.dropFirst(prefix.count))
    }

    /// Every path in a message that starts with the current folder (at the start, or after a space, quote or
    /// parenthesis), shown relative to it.
    func text(_ text: String) -> String {
        guard let prefix, text.contains(prefix) else { return text }
        var out = ""
        var rest = Substring(text)
        while let range = rest.range(of: prefix) {
            let before = range.lowerBound == rest.startIndex ? out.last : rest[rest.index(before: range.lowerBound)]
            out += rest[..<range.lowerBound]
            if before == nil || " (\"'\t".contains(before!) {
                rest = rest[range.upperBound...]
            } else {
                out += rest[range]
                rest = rest[range.upperBound...]
            }
        }
        return out + rest
    }
}
