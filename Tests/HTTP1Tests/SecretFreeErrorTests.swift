import Testing
@testable import HTTP1

/// Error descriptions end up in Proxy-Status, error bodies and the access log: nothing a client or upstream
/// sent in a query, a header value or a body may appear in them.
@Suite struct SecretFreeErrorTests {
    static let secret = "SeKrEt0123456789"

    static func describe(_ body: () throws -> Void) -> String? {
        do {
            try body()
            return nil
        } catch {
            return ProxyErrorResponse.badRequest(error as! HTTPParseError).proxyStatusValue
        }
    }

    @Test(arguments: [
        "/v1/accounts?access_token=\(secret)",
        "/x?u=http://a/\(secret)",
        "\(secret)://api.test/?q=1",
        "http://api.test/?k=\(secret)#f",
        "http://user:\(secret)@api.test/",
    ])
    func forwardTargets(target: String) throws {
        let text = try #require(Self.describe { _ = try AbsoluteTarget.parse(target) })
        #expect(!text.lowercased().contains(Self.secret.lowercased()))
    }

    /// A path the normaliser refuses (dot segments are judged there, after the target parsed): the refusal
    /// names the form, never the query that came with it.
    @Test func refusedPathsDoNotQuoteTheQuery() throws {
        let target = try AbsoluteTarget.parse("http://api.test/a/../b?k=\(Self.secret)")
        guard case .failure(let refusal) = PathNormalizer.normalize(target.path[...]) else {
            Issue.record("a dot segment must be refused")
            return
        }
        #expect(!refusal.description.lowercased().contains(Self.secret.lowercased()))
    }

    @Test(arguments: [
        "Transfer-Encoding: gzip-\(secret), chunked",
        "Transfer-Encoding: \(secret)",
        "Content-Length: \(secret)",
        "X-Key: \(secret)\u{1}",
    ])
    func requestHeaderValues(header: String) throws {
        let text = try #require(Self.describe {
            let head = try HeadParser.parseRequest(Array("POST http://a/ HTTP/1.1\r\nHost: a\r\n\(header)\r\n\r\n".utf8))
            _ = try BodyFraming.forRequest(head)
        })
        #expect(!text.lowercased().contains(Self.secret.lowercased()))
    }

    @Test func knownCodingsAreStillNamed() {
        #expect(HTTPParseError.unsupportedTransferEncoding("gzip, chunked").description.contains("gzip"))
        #expect(!HTTPParseError.unsupportedTransferEncoding("x-\(Self.secret)").description.contains(Self.secret))
    }
}

/// The codings a Transfer-Encoding error names: registered ones by name, without their parameters (which could
/// carry anything) but saying they had some, so that a message never reads "(chunked) does not end in chunked".
@Suite struct TransferEncodingErrorTests {
    @Test func aFinalChunkedWithParametersIsNotNamedAsPlainChunked() {
        let text = HTTPParseError.transferEncodingNotEndingInChunked("chunked;q=\(SecretFreeErrorTests.secret)").description
        #expect(!text.contains("(chunked)"), "\(text)")
        #expect(text.contains("chunked with parameters"), "\(text)")
        #expect(!text.contains(SecretFreeErrorTests.secret))
    }

    @Test func codingsWithoutParametersAreNamedAsBefore() {
        #expect(HTTPParseError.transferEncodingNotEndingInChunked("gzip").description.hasPrefix("Transfer-Encoding (gzip) does not end in chunked"))
        #expect(HTTPParseError.unsupportedTransferEncoding("gzip, chunked").description.contains("(gzip, chunked)"))
    }
}
