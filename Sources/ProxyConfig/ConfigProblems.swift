/// Collects the mistakes in one config file, so that `check` and a failed reload report them all instead of
/// stopping at the first. One mistake per key: a wrong type and the "missing" that follows from it are one.
public final class ConfigProblems {
    public static let cap = 20

    let file: String
    private(set) var errors: [ConfigError] = []
    private(set) var truncated = false
    /// Names for key prefixes, for messages: `route[2]` → `route "payments-eu" (route[2])`.
    private var prefixLabels: [String: String] = [:]

    public init(file: String) { self.file = file }

    func record(_ error: ConfigError) {
        guard !errors.contains(where: { $0.key == error.key && $0.file == error.file }) else { return }
        guard errors.count < Self.cap else {
            truncated = true
            return
        }
        errors.append(error)
    }

    /// Messages name keys under `prefix` (a table such as `route[2]`) with `label` instead.
    func label(_ prefix: String, as label: String) {
        prefixLabels[prefix] = label
    }

    private func label(of key: String) -> String? {
        guard let end = key.firstIndex(of: ".") ?? (key.isEmpty ? nil : key.endIndex),
              let label = prefixLabels[String(key[..<end])] else { return nil }
        return label + key[end...]
    }

    /// Runs `body`; a `ConfigError` it throws is recorded and reading goes on with the next part of the file.
    /// Returns whether `body` finished.
    @discardableResult
    public func collect(_ body: () throws -> Void) -> Bool {
        do {
            try body()
            return true
        } catch let error as ConfigError {
            for e in error.all { record(e) }
            return false
        } catch {
            record(ConfigError(file: file, key: "", message: "\(error)"))
            return false
        }
    }

    /// Throws every recorded mistake, each with its line in `text` when the key is there.
    public func throwIfAny(text: String) throws {
        guard !errors.isEmpty else { return }
        let lines = TOMLKeyLocator(text)
        var located = errors.map { error -> ConfigError in
            var e = error
            if e.line == nil, e.file == file, !e.key.isEmpty { e.line = lines.line(of: e.key) }
            if e.file == file, e.keyLabel == nil { e.keyLabel = label(of: e.key) }
            return e
        }
        // Unknown keys first: `identiy` is the cause of `identity: missing`, so it is read first. Then a stable
        // sort by line; mistakes without one (whole-file, environment) keep their order at the end.
        located = located.enumerated().sorted { a, b in
            if a.element.unknownKey != b.element.unknownKey { return a.element.unknownKey }
            switch (a.element.line, b.element.line) {
            case let (x?, y?): return x != y ? x < y : a.offset < b.offset
            case (_?, nil): return true
            case (nil, _?): return false
            case (nil, nil): return a.offset < b.offset
            }
        }.map(\.element)
        var first = located[0]
        first.others = Array(located.dropFirst())
        first.truncated = truncated
        throw first
    }
}

/// The valid key nearest to a mistyped one, for "did you mean `identity`?".
public enum NearestKey {
    /// The closest of `candidates` within a small edit distance (2, or 3 for long keys), or nil. Case and
    /// `-` for `_` do not count as differences.
    public static func suggestion(for key: String, among candidates: some Sequence<String>) -> String? {
        let wanted = normalized(key)
        let limit = wanted.count >= 10 ? 3 : 2
        var best: (String, Int)?
        for candidate in candidates.sorted() {
            let distance = editDistance(wanted, normalized(candidate))
            if distance <= limit && distance < (best?.1 ?? Int.max) { best = (candidate, distance) }
        }
        return best?.0
    }

    static func normalized(_ key: String) -> [Character] {
        Array(key.lowercased().map { $0 == "-" ? "_" : $0 })
    }

    /// Levenshtein distance, with a transposition of neighbours counting as one edit.
    static func editDistance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var d = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
        for i in 0...a.count { d[i][0] = i }
        for j in 0...b.count { d[0][j] = j }
        for i in 1...a.count {
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
                }
            }
        }
        return d[a.count][b.count]
    }
}
