import Testing
@testable import HTTP1

/// The one-pass field parser gives the same fields, or the same error, as the line-by-line reading it replaced.
@Suite struct FieldParsingReferenceTests {
    static let lines = ["Host: a", "X: y", "X:y", "X:", "X: ", "X:  y  ", "X:\ty\t", " X: y", "\tX: y", "X : y", "X\t: y", ": y",
                        "X y", "X", "X@: y", "X: y\u{01}", "X: y\u{7F}", "X: caf\u{E9}", "X: a:b", "X-Y_z.~!#$%&'*+^`|: v",
                        "X: y\rz", "X: y\nz", "X\r: y", "\u{E9}: y", "X: \u{E9}\u{E9} ", "Long-Field-Name: a somewhat longer value, with commas"]

    @Test func sameFieldsOrSameErrorAsTheLineReading() {
        let limits = HeadLimits(maxHeadBytes: 4096, maxHeaderCount: 3)
        var heads: [[UInt8]] = []
        for a in Self.lines {
            heads.append(Array("GET / HTTP/1.1\r\n\(a)\r\n\r\n".utf8))
            heads.append(Array("GET / HTTP/1.1\r\n\(a)\r\n".utf8))
            heads.append(Array("GET / HTTP/1.1\r\n\(a)".utf8))
            for b in Self.lines {
                heads.append(Array("GET / HTTP/1.1\r\n\(a)\r\n\(b)\r\n\r\n".utf8))
                heads.append(Array("GET / HTTP/1.1\r\nHost: a\r\n\(a)\r\n\(b)\r\nX: 1\r\n\r\n".utf8))  // 4 fields: too many
            }
        }
        for bytes in heads {
            let actual = Result { try HeadParser.parseRequest(bytes, limits: limits).headers }
            let expected = Result { try bytes.withUnsafeBytes { raw -> HTTPHeaders in
                var lines = try HeadParser.Lines(raw, limits: limits)
                _ = lines.next()
                return try referenceFields(&lines, limits: limits)
            } }
            switch (actual, expected) {
            case (.success(let x), .success(let y)): #expect(x == y, "\(String(decoding: bytes, as: UTF8.self).debugDescription)")
            case (.failure(let x), .failure(let y)):
                #expect(String(describing: x) == String(describing: y), "\(String(decoding: bytes, as: UTF8.self).debugDescription)")
            default: Issue.record("\(String(decoding: bytes, as: UTF8.self).debugDescription): \(actual) vs \(expected)")
            }
        }
    }
}

/// The field reading before it became one pass per line.
private func referenceFields(_ lines: inout HeadParser.Lines, limits: HeadLimits) throws -> HTTPHeaders {
    var fields: [HTTPField] = []
    while let line = lines.next() {
        guard fields.count < limits.maxHeaderCount else { throw HTTPParseError.tooManyHeaders(limit: limits.maxHeaderCount) }
        if line.first == 0x20 || line.first == 0x09 { throw HTTPParseError.obsoleteLineFolding }
        guard let colon = line.firstIndex(of: 0x3A) else { throw HTTPParseError.headerWithoutColon }
        let name = line[line.startIndex..<colon]
        if let last = name.last, last == 0x20 || last == 0x09 { throw HTTPParseError.whitespaceBeforeColon }
        guard !name.isEmpty, name.allSatisfy(isTokenChar) else { throw HTTPParseError.invalidFieldName }
        var value = line[(colon + 1)...]
        while let f = value.first, f == 0x20 || f == 0x09 { value = value.dropFirst() }
        while let l = value.last, l == 0x20 || l == 0x09 { value = value.dropLast() }
        let nameString = ascii(name)
        guard value.allSatisfy(isFieldValueChar) else { throw HTTPParseError.invalidFieldValue(name: nameString) }
        fields.append(HTTPField(name: nameString, value: latin1(value)))
    }
    return HTTPHeaders(fields)
}

@Suite struct LineCountTests {
    /// The word-at-a-time count of LF bytes equals a byte-by-byte count, from every start and at every length.
    @Test func countsEveryLineFeed() throws {
        var bytes: [UInt8] = []
        for k in 0..<97 { bytes.append([0x0A, 0x0D, 0x8A, 0x0B, 0x09, 0xFF, 0x00, 0x61][(k * 7 + k / 5) % 8]) }
        for end in 0...bytes.count {
            try Array(bytes[0..<end]).withUnsafeBytes { raw in
                for start in 0...min(end, 17) {
                    var lines = try HeadParser.Lines(raw, limits: HeadLimits())
                    lines.position = start
                    #expect(lines.remainingLineCount() == bytes[start..<end].filter { $0 == 0x0A }.count, "\(start) \(end)")
                }
            }
        }
    }
}

@Suite struct VersionTests {
    @Test func versionsReadInPlace() throws {
        #expect(try HeadParser.parseRequest(Array("GET / HTTP/1.1\r\nHost: a\r\n\r\n".utf8)).version == .http11)
        #expect(try HeadParser.parseRequest(Array("GET / HTTP/1.0\r\n\r\n".utf8)).version == .http10)
        #expect(try HeadParser.parseResponse(Array("HTTP/1.0 200 OK\r\n\r\n".utf8)).version == .http10)
        #expect(throws: HTTPParseError.unsupportedVersion("HTTP/1.2")) { try HeadParser.parseRequest(Array("GET / HTTP/1.2\r\n\r\n".utf8)) }
        #expect(throws: HTTPParseError.unsupportedVersion("HTTP/2.0")) { try HeadParser.parseRequest(Array("GET / HTTP/2.0\r\n\r\n".utf8)) }
        #expect(throws: HTTPParseError.invalidRequestLine) { try HeadParser.parseRequest(Array("GET / http/1.1\r\n\r\n".utf8)) }
        #expect(throws: HTTPParseError.invalidRequestLine) { try HeadParser.parseRequest(Array("GET / HTTP/1.10\r\n\r\n".utf8)) }
        #expect(throws: HTTPParseError.invalidRequestLine) { try HeadParser.parseRequest(Array("GET / HTTP/1.\r\n\r\n".utf8)) }
    }
}
