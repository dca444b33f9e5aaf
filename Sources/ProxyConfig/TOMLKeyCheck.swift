/// A check of TOML key syntax (table headers and the keys of key/value lines) before the text reaches
/// TOMLKit: its C++ parser (toml++) stops the process with a failed assertion on some malformed keys, such as
/// `[.a]` or `a. = 1`, instead of reporting them. Found by fuzzing the config loader (scripts/fuzz config).
enum TOMLKeyCheck {
    /// The quotes of multi-line strings: `"""` and `'''`.
    static let multilineDelimiters: [UInt8] = [UInt8(ascii: "\""), UInt8(ascii: "'")]

    /// One line that holds a table header or a key, as `walk` reports it.
    struct KeyLine {
        var number: Int
        var isHeader: Bool
        var isArrayHeader: Bool
        /// The key's parts (quotes removed, escapes kept as written), when the walk collects them.
        var parts: [Range<Int>]
        /// False when the header or key is malformed.
        var wellFormed: Bool
    }

    /// Line number and what is wrong with the first malformed key, or nil.
    static func firstProblem(_ text: String) -> (line: Int, message: String)? {
        var problem: (line: Int, message: String)?
        walk(text, collectingParts: false) { _, line in
            guard !line.wellFormed else { return true }
            problem = (line.number, line.isHeader ? "malformed table header" : "expected key = value")
            return false
        }
        return problem
    }

    /// Calls `visit` with each line that holds a table header or a key (skipping comments, blank lines, and
    /// the inside of multi-line strings and arrays) until it returns false. Works on the UTF-8 bytes: lines end
    /// at LF, and a CR before it is not part of the line (as a Swift Character, CR LF is one, and a split on
    /// "\n" saw a CRLF file as one line).
    static func walk(_ text: String, collectingParts: Bool, _ visit: (UnsafeBufferPointer<UInt8>, KeyLine) -> Bool) {
        var text = text
        text.withUTF8 { b in
            var multiline: UInt8?  // the quote of the multi-line string being skipped
            var depth = 0          // open [ and { of a value that spans lines (a multi-line array)
            var number = 0
            var lineStart = 0
            var parts: [Range<Int>] = []
            while lineStart <= b.count {
                number += 1
                var lineEnd = lineStart
                while lineEnd < b.count && b[lineEnd] != 0x0A { lineEnd += 1 }
                let next = lineEnd + 1
                if lineEnd > lineStart && b[lineEnd - 1] == 0x0D { lineEnd -= 1 }
                defer { lineStart = next }
                if let quote = multiline {
                    if find(triple: quote, in: b, lineStart, lineEnd) != nil { multiline = nil }
                    continue
                }
                if depth > 0 {
                    depth += bracketBalance(b, lineStart, lineEnd)
                    continue
                }
                let first = skipBlanks(b, lineStart, lineEnd)
                if first == lineEnd || b[first] == UInt8(ascii: "#") { continue }
                parts.removeAll(keepingCapacity: true)
                if b[first] == UInt8(ascii: "[") {
                    let isArray = first + 1 < lineEnd && b[first + 1] == UInt8(ascii: "[")
                    let rest = dottedKey(b, first + (isArray ? 2 : 1), lineEnd, collectingParts, &parts)
                    var closed = false
                    if let rest {
                        closed = rest < lineEnd && b[rest] == UInt8(ascii: "]")
                        if isArray { closed = closed && rest + 1 < lineEnd && b[rest + 1] == UInt8(ascii: "]") }
                    }
                    if !visit(b, KeyLine(number: number, isHeader: true, isArrayHeader: isArray, parts: parts, wellFormed: closed)) { return }
                    continue
                }
                guard let rest = dottedKey(b, first, lineEnd, collectingParts, &parts), rest < lineEnd,
                      b[rest] == UInt8(ascii: "=") else {
                    if !visit(b, KeyLine(number: number, isHeader: false, isArrayHeader: false, parts: parts, wellFormed: false)) { return }
                    continue
                }
                if !visit(b, KeyLine(number: number, isHeader: false, isArrayHeader: false, parts: parts, wellFormed: true)) { return }
                // A value that opens a multi-line string or array: skip until it closes.
                let value = skipBlanks(b, rest + 1, lineEnd)
                if let quote = multilineDelimiters.first(where: { isTriple($0, b, value, lineEnd) }) {
                    if find(triple: quote, in: b, value + 3, lineEnd) == nil { multiline = quote }
                } else {
                    depth = max(0, bracketBalance(b, value, lineEnd))
                }
            }
        }
    }

    private static func skipBlanks(_ b: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Int {
        var i = start
        while i < end && (b[i] == 0x20 || b[i] == 0x09) { i += 1 }
        return i
    }

    private static func isTriple(_ quote: UInt8, _ b: UnsafeBufferPointer<UInt8>, _ at: Int, _ end: Int) -> Bool {
        at + 3 <= end && b[at] == quote && b[at + 1] == quote && b[at + 2] == quote
    }

    private static func find(triple quote: UInt8, in b: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Int? {
        var i = start
        while i + 3 <= end {
            if isTriple(quote, b, i, end) { return i }
            i += 1
        }
        return nil
    }

    /// Opening minus closing brackets and braces outside strings and comments.
    static func bracketBalance(_ b: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Int {
        var balance = 0
        var quote: UInt8?
        var escaped = false
        var i = start
        while i < end {
            let c = b[i]
            i += 1
            if let q = quote {
                if escaped {
                    escaped = false
                } else if c == UInt8(ascii: "\\") && q == UInt8(ascii: "\"") {
                    escaped = true
                } else if c == q {
                    quote = nil
                }
                continue
            }
            switch c {
            case UInt8(ascii: "\""), UInt8(ascii: "'"): quote = c
            case UInt8(ascii: "#"): return balance
            case UInt8(ascii: "["), UInt8(ascii: "{"): balance += 1
            case UInt8(ascii: "]"), UInt8(ascii: "}"): balance -= 1
            default: break
            }
        }
        return balance
    }

    /// Consumes `key ( . key )*` with optional blanks around each part; returns where what follows starts, or
    /// nil. Appends each part (quotes removed) to `parts` when `collect` is set.
    static func dottedKey(_ b: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int, _ collect: Bool,
                          _ parts: inout [Range<Int>]) -> Int? {
        var i = start
        while true {
            i = skipBlanks(b, i, end)
            guard i < end else { return nil }
            let first = b[i]
            if first == UInt8(ascii: "\"") || first == UInt8(ascii: "'") {
                var j = i + 1
                var closed = false
                while j < end {
                    let c = b[j]
                    if c == UInt8(ascii: "\\") && first == UInt8(ascii: "\"") {
                        j += 2
                        continue
                    }
                    if c == first {
                        closed = true
                        break
                    }
                    j += 1
                }
                guard closed else { return nil }
                if collect { parts.append((i + 1)..<j) }
                i = j + 1
            } else {
                var j = i
                while j < end && isBareKeyByte(b[j]) { j += 1 }
                guard j > i else { return nil }
                if collect { parts.append(i..<j) }
                i = j
            }
            i = skipBlanks(b, i, end)
            guard i < end && b[i] == UInt8(ascii: ".") else { return i }
            i += 1
        }
    }

    private static func isBareKeyByte(_ c: UInt8) -> Bool {
        (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || (c >= 0x30 && c <= 0x39) || c == 0x5F || c == 0x2D
    }
}

/// The line of each key and table in a TOML text, named as the config loader names them (`proxy.listen`,
/// `route[2].identity`, `identities.us.certificates[1].cert`), so a mistake can say where it is.
struct TOMLKeyLocator {
    private var lines: [String: Int] = [:]

    init(_ text: String) {
        var table = ""
        var arrayCounts: [String: Int] = [:]
        var found: [String: Int] = [:]
        TOMLKeyCheck.walk(text, collectingParts: true) { b, line in
            guard line.wellFormed else { return true }
            let key = line.parts.map { String(decoding: UnsafeBufferPointer(rebasing: b[$0]), as: UTF8.self) }.joined(separator: ".")
            if line.isHeader {
                table = key
                if line.isArrayHeader {
                    let n = arrayCounts[table, default: 0] + 1
                    arrayCounts[table] = n
                    table += "[\(n)]"
                }
                if found[table] == nil { found[table] = line.number }
            } else {
                let path = (table.isEmpty ? "" : table + ".") + key
                if found[path] == nil { found[path] = line.number }
            }
            return true
        }
        lines = found
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
