/// A configuration mistake: which file, which line (when the key is in the file), which key, and what was
/// expected instead. A config with several mistakes throws the first with the rest in `others`: unknown keys
/// first (a misspelled key is the cause of what follows from it), then by line.
public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public var file: String
    /// The line of the key in the file, when it is there (a missing key has the line of its table, if any).
    public var line: Int?
    /// Dotted key path, e.g. `upstream.connect_timeout` or `route[2].identity`; empty for whole-file errors.
    public var key: String
    public var message: String
    /// How messages name the key when it differs from `key`: a route with a `name` is
    /// `route "payments-eu" (route[2]).identity`. `key` stays the path scripts match on (`--format json`).
    public var keyLabel: String?
    /// An unknown key (most often a misspelled one): reported before the mistakes it may cause.
    public var unknownKey = false
    /// The other mistakes found in the same file, in that order (up to `ConfigProblems.cap` in all).
    public var others: [ConfigError] = []
    /// More mistakes were found than are reported.
    public var truncated = false

    public init(file: String, line: Int? = nil, key: String, message: String) {
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    /// Every mistake, this one first, each without `others`.
    public var all: [ConfigError] {
        var first = self
        first.others = []
        first.truncated = false
        return [first] + others
    }

    /// `file:line: key: message`, the way compilers name a place, so editors can jump to it.
    public var single: String {
        let place = line.map { "\(file):\($0)" } ?? file
        return key.isEmpty ? "\(place): \(message)" : "\(place): \(keyLabel ?? key): \(message)"
    }

    /// One line per mistake.
    public var description: String {
        var lines = all.map(\.single)
        if truncated { lines.append("\(file): stopped after \(lines.count) mistakes; fix these and check again") }
        return lines.joined(separator: "\n")
    }
}
