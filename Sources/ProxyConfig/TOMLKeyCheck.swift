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
        var s = text
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
                s = s[s.index(after: i)...]
            } else {
                let bare = s.prefix { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }
                guard !bare.isEmpty else { return nil }
                s = s.dropFirst(bare.count)
            }
            s = s.drop { $0 == " " || $0 == "\t" }
            guard s.first == "." else { return s }
            s = s.dropFirst()
        }
    }
}
