import Foundation
import ProxyConfig

/// What to write instead, for the TOML syntax errors a newcomer makes most: a value left without quotes
/// (`connect_timeout = 5s`, `host = api.example.com`, `connect = 127.0.0.1:8443`). The TOML parser only says
/// which character it did not expect; this names the key and the line to write. Pure: works on the text of the
/// line the parser pointed at, and returns nil for anything it does not recognise (no made-up advice).
enum SyntaxHint {
    /// The hint for `line` (the whole line of the file), or nil.
    static func hint(forLine line: String) -> String? {
        guard let equals = line.firstIndex(of: "=") else { return nil }
        let key = line[..<equals].trimmingCharacters(in: CharacterSet(charactersIn: " \t"))
        guard !key.isEmpty, key.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }) else {
            return nil
        }
        var value = Substring(line[line.index(after: equals)...])
        if let comment = value.firstIndex(of: "#") { value = value[..<comment] }
        let token = value.trimmingCharacters(in: CharacterSet(charactersIn: " \t\r"))
        guard !token.isEmpty, !token.contains(where: { " \t\"'[]{}=,".contains($0) }),
              token != "true", token != "false" else { return nil }
        if isDuration(token) {
            return "\(key): durations are strings with a unit: write \(key) = \"\(token)\""
        }
        // A bare word, a host name or an address with its port: text that needed quotes. A number with a stray
        // letter (`workers = 2x`, `connect_timeout = 1.5s`) is left alone: quoting it would not make it right.
        let looksLikeText = token.first.map { $0.isLetter } == true || (token.contains(":") && !token.hasPrefix("-"))
        guard looksLikeText else { return nil }
        return "\(key): text values are quoted in TOML: write \(key) = \"\(token)\""
    }

    /// What the config accepts as a duration once quoted: `5s`, `250ms`, `1m30s` (digits, then ms, s, m or h,
    /// repeated).
    static func isDuration(_ token: String) -> Bool {
        var rest = Substring(token)
        guard !rest.isEmpty else { return false }
        while !rest.isEmpty {
            let digits = rest.prefix { $0.isASCII && $0.isNumber }
            guard !digits.isEmpty else { return false }
            rest = rest.dropFirst(digits.count)
            if rest.hasPrefix("ms") { rest = rest.dropFirst(2) }
            else if let unit = rest.first, "smh".contains(unit) { rest = rest.dropFirst() }
            else { return false }
        }
        return true
    }

    /// The hint for a config error, when it is a TOML syntax error ("line N, column M: ...") on a line that
    /// `hint(forLine:)` recognises, as `file:N: hint`.
    static func hint(for error: ConfigError) -> String? {
        guard error.key.isEmpty, error.line == nil, error.message.hasPrefix("line ") else { return nil }
        let digits = error.message.dropFirst("line ".count).prefix { $0.isNumber }
        guard let number = Int(digits), number >= 1,
              error.message.dropFirst("line ".count + digits.count).hasPrefix(", column "),
              let text = ConfigLoader.readTextFile(ConfigLoader.absolutePath(error.file)) else { return nil }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard number <= lines.count, let hint = hint(forLine: String(lines[number - 1])) else { return nil }
        return "\(error.file):\(number): \(hint)"
    }
}
