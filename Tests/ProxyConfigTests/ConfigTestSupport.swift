@testable import ProxyConfig

/// Parses `text` as a config file named proxy.conf in /etc/mtls-proxy (relative paths resolve there).
func load(_ text: String) throws -> ProxyConfiguration {
    try ConfigLoader.parse(text, file: "proxy.conf", baseDirectory: "/etc/mtls-proxy")
}

/// The ConfigError that parsing `text` ends with; nil if it parses, or fails with another error.
func configError(_ text: String) -> ConfigError? {
    do {
        _ = try load(text)
        return nil
    } catch let e as ConfigError {
        return e
    } catch {
        return nil
    }
}
