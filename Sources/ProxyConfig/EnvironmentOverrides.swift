/// The few settings people set per container, from the environment:
/// `MTLS_PROXY_CONFIG` (the config file), `MTLS_PROXY_LISTEN` ([proxy] listen), `MTLS_PROXY_LOG_LEVEL` ([log] level).
public enum EnvironmentOverrides {
    public static let configVariable = "MTLS_PROXY_CONFIG"
    public static let listenVariable = "MTLS_PROXY_LISTEN"
    public static let logLevelVariable = "MTLS_PROXY_LOG_LEVEL"

    public static func configPath(_ environment: [String: String]) -> String? {
        guard let path = environment[configVariable], !path.isEmpty else { return nil }
        return path
    }

    /// Applies the overrides; a value that does not parse is an error naming the variable.
    public static func apply(_ environment: [String: String], to config: inout ProxyConfiguration) throws {
        if let listen = environment[listenVariable], !listen.isEmpty {
            guard let address = HostPort.parse(listen) else {
                throw ConfigError(file: "environment", key: listenVariable,
                                  message: "expected an address and port such as \"127.0.0.1:3128\", got \"\(listen)\"")
            }
            config.proxy.listen = address
            try ConfigLoader.requireLoopbackOrAllowList(address, config.proxy.allowClients, file: "environment \(listenVariable)", key: "proxy")
        }
        if let level = environment[logLevelVariable], !level.isEmpty {
            guard let value = LogSettings.Level(rawValue: level.lowercased()) else {
                throw ConfigError(file: "environment", key: logLevelVariable,
                                  message: "expected one of \(LogSettings.Level.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(level)\"")
            }
            config.log.level = value
        }
    }
}
