#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Loads the config file for reloads without parsing a text twice.
///
/// TOMLKit (0.6) never frees what it parses: the document itself, and every list of keys or values read from
/// it (`tableGetKeys`, `tableGetValues` return malloc'ed arrays nobody frees). A proxy reloaded every few
/// seconds for a year would grow without end. So a text already parsed (valid or not) is answered from here,
/// and only a text never seen before reaches TOMLKit: memory grows by one parse per distinct config text,
/// not per reload. The environment overrides are applied afresh each time (pure, no TOMLKit).
public final class ParsedConfigCache: @unchecked Sendable {
    private struct Entry {
        let text: String
        let file: String
        let base: String
        let result: Result<ProxyConfiguration, ConfigError>
    }

    public let capacity: Int
    /// Most recently used last.
    private var entries: [Entry] = []
    /// How many texts went to the parser (for tests and the soak report).
    public private(set) var parses = 0

    public init(capacity: Int = 16) {
        self.capacity = max(1, capacity)
    }

    public var count: Int { entries.count }

    /// Same answer as `ConfigLoader.load(file:environment:)`.
    public func load(file: String, environment: [String: String] = [:]) throws -> ProxyConfiguration {
        let absolute = ConfigLoader.absolutePath(file)
        let text: String
        switch ConfigLoader.readText(absolute) {
        case .success(let read): text = read
        case .failure(let failure): throw ConfigError(file: file, key: "", message: "cannot read the config file: \(failure)")
        }
        let base = ConfigLoader.directory(of: absolute)
        let result: Result<ProxyConfiguration, ConfigError>
        if let i = entries.firstIndex(where: { $0.text == text && $0.file == file && $0.base == base }) {
            let entry = entries.remove(at: i)
            entries.append(entry)
            result = entry.result
        } else {
            parses += 1
            do {
                result = .success(try ConfigLoader.parse(text, file: file, baseDirectory: base))
            } catch let error as ConfigError {
                result = .failure(error)
            }
            entries.append(Entry(text: text, file: file, base: base, result: result))
            if entries.count > capacity { entries.removeFirst(entries.count - capacity) }
        }
        var config = try result.get()
        try EnvironmentOverrides.apply(environment, to: &config)
        return config
    }
}
