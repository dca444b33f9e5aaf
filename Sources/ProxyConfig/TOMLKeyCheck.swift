/// A check of TOML key syntax (table headers and the keys of key/value lines) before the text reaches
/// TOMLKit: its C++ parser (toml++) stops the process with a failed assertion on some malformed keys, such as
/// `[.a]` or `a. = 1`, instead of reporting them. Found by fuzzing the config loader (scripts/fuzz config).
enum TOMLKeyCheck {
    static let multilineDelimiters = ["\"\"\"", "'''"]

    /// Line number and what is wrong with the first malformed key, or nil.
    static func firstProblem(_ text: String) -> (line: Int, message: String)? {
        var multiline: String?  // the delimiter of the multi-line string being skipped
        var depth = 0           // open [ and { of a value that spans lines (a multi-line array)
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = Substring(rawLine)
            if let delimiter = multiline {
                if line.firstRange(of: delimiter) != nil { multiline = nil }
                continue
            }
            if depth > 0 {
                depth += bracketBalance(line)
                continue
            }
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            if trimmed.isEmpty || trimmed.first == "#" { continue }
            if trimmed.first == "[" {
                let isArray = trimmed.hasPrefix("[[")
                let body = trimmed.dropFirst(isArray ? 2 : 1)
                guard let rest = dottedKey(body), rest.hasPrefix(isArray ? "]]" : "]") else {
                    return (index + 1, "malformed table header")
                }
                continue
            }
            guard let rest = dottedKey(trimmed), rest.first == "=" else {
                return (index + 1, "expected key = value")
            }
            // A value that opens a multi-line string or array: skip until it closes.
            let value = rest.dropFirst().drop { $0 == " " || $0 == "\t" }
            if let delimiter = multilineDelimiters.first(where: { value.hasPrefix($0) }) {
                if value.dropFirst(3).firstRange(of: delimiter) == nil { multiline = delimiter }
            } else {
                depth = max(0, bracketBalance(value))
            }
        }
        return nil
    }

    /// Opening minus closing brackets and braces outside strings and comments.
    static func bracketBalance(_ text: Substring) -> Int {
        var balance = 0
        var quote: Character?
        var escaped = false
        for c in text {
            if let q = quote {
                if escaped {
                    escaped = false
                } else if c == "\\" && q == "\"" {
                    escaped = true
                } else if c == q {
                    quote = nil
                }
                continue
            }
            switch c {
            case "\"", "'": quote = c
            case "#": return balance
            case "[", "{": balance += 1
            case "]", "}": balance -= 1
            default: break
            }
        }
        return balance
    }

    /// Consumes `key ( . key )*` with optional blanks around each part; returns what follows, or nil.
    static func dottedKey(_ text: Substring) -> Substring? {
        dottedKeyParts(text)?.rest
    }

    /// The parts of `key ( . key )*` (quotes removed) and what follows, or nil.
    static func dottedKeyParts(_ text: Substring) -> (parts: [String], rest: Substring)? {
        var s = text
        var parts: [String] = []
        while true {
            s = s.drop { $0 == " " || $0 == "\t" }
            guard let first = s.first else { return nil }
            if first == "\"" || first == "'" {
                var i = s.index(after: s.startIndex)
                var closed = false
                while i < s.endIndex {
                    let c = s[i]
                    if c == "\\" && first == "\"" {
                        i = s.index(after: i)
                        if i < s.endIndex { i = s.index(after: i) }
                        continue
                    }
                    if c == first {
                        closed = true
                        break
                    }
                    i = s.index(after: i)
                }
                guard closed else { return nil }
                parts.append(String(s[s.index(after: s.startIndex)..<i]))
                s = s[s.index(after: i)...]
            } else {
                let bare = s.prefix { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }
                guard !bare.isEmpty else { return nil }
                parts.append(String(bare))
                s = s.dropFirst(bare.count)
            }
            s = s.drop { $0 == " " || $0 == "\t" }
            guard s.first == "." else { return (parts, s) }
            s = s.dropFirst()
        }
    }
}

/// The line of each key and table in a TOML text, named as the config loader names them (`proxy.listen`,
/// `route[2].identity`, `identities.us.certificates[1].cert`), so a mistake can say where it is.
struct TOMLKeyLocator {
    private var lines: [String: Int] = [:]

    init(_ text: String) {
        var multiline: String?
        var depth = 0
        var table = ""
        var arrayCounts: [String: Int] = [:]
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if let delimiter = multiline {
                if line.firstRange(of: delimiter) != nil { multiline = nil }
                continue
            }
            if depth > 0 {
                depth += TOMLKeyCheck.bracketBalance(line)
                continue
            }
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            if trimmed.isEmpty || trimmed.first == "#" { continue }
            if trimmed.first == "[" {
                let isArray = trimmed.hasPrefix("[[")
                guard let (parts, _) = TOMLKeyCheck.dottedKeyParts(trimmed.dropFirst(isArray ? 2 : 1)) else { continue }
                table = parts.joined(separator: ".")
                if isArray {
                    let n = arrayCounts[table, default: 0] + 1
                    arrayCounts[table] = n
                    table += "[\(n)]"
                }
                note(table, index + 1)
                continue
            }
            guard let (parts, rest) = TOMLKeyCheck.dottedKeyParts(trimmed), rest.first == "=" else { continue }
            note((table.isEmpty ? "" : table + ".") + parts.joined(separator: "."), index + 1)
            let value = rest.dropFirst().drop { $0 == " " || $0 == "\t" }
            if let delimiter = TOMLKeyCheck.multilineDelimiters.first(where: { value.hasPrefix($0) }) {
                if value.dropFirst(3).firstRange(of: delimiter) == nil { multiline = delimiter }
            } else {
                depth = max(0, TOMLKeyCheck.bracketBalance(value))
            }
        }
    }

    private mutating func note(_ path: String, _ line: Int) {
        if lines[path] == nil { lines[path] = line }
    }

    /// The line of `keyPath`, else of the nearest enclosing key or table that is in the text.
    func line(of keyPath: String) -> Int? {
        var path = Substring(keyPath)
        while !path.isEmpty {
            if let line = lines[String(path)] { return line }
            if path.hasSuffix("]"), let open = path.lastIndex(of: "[") {
                path = path[..<open]
            } else if let dot = path.lastIndex(of: ".") {
                path = path[..<dot]
            } else {
                return nil
            }
        }
        return nil
    }
}
