import Testing
@testable import HTTP1

/// The request-path normaliser: one canonical spelling (RFC 3986 §6.2.2), or a refusal naming the form.
@Suite struct PathNormalizerTests {
    /// (input, canonical form) under the strict default rules.
    static let canonical: [(String, String)] = [
        ("/", "/"),
        ("/v1/accounts", "/v1/accounts"),
        ("/v1/", "/v1/"),
        ("/%61dmin", "/admin"),
        ("/%61%64%6D%69%6e/x", "/admin/x"),
        ("/%41dmin", "/Admin"),
        ("/%7euser", "/~user"),
        ("/%7E%2D%2e%5F%30%39", "/~-._09"),
        ("/a%3ab", "/a%3Ab"),
        ("/a%3Ab", "/a%3Ab"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/%25", "/%25"),
        ("/%2561", "/%2561"),          // one level of decoding only: %25 stays, so %2561 is not %61
        ("/a..b/.well-known/...", "/a..b/.well-known/..."),
        ("/..a/a../.a.", "/..a/a../.a."),
        ("/a;b=c/d;e", "/a;b=c/d;e"),
        ("/.x;y", "/.x;y"),
        ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
        ("/%20/%3F/%23", "/%20/%3F/%23"),
        ("/a%2Eb", "/a.b"),
        ("/%2E%2E%2E", "/..."),
    ]

    @Test(arguments: canonical)
    func canonicalForm(_ input: String, _ expected: String) {
        let result = PathNormalizer.normalize(input[...])
        #expect(result == .success(.init(path: expected, used: [])))
        // Idempotent: the canonical form is its own canonical form.
        #expect(PathNormalizer.normalize(expected[...]) == .success(.init(path: expected, used: [])))
    }

    /// (input, refusal) under the strict default rules: every form named in the issue, and mixtures.
    static let refused: [(String, PathRefusal)] = [
        ("/v1/../admin", .dotSegment),
        ("/v1/./x", .dotSegment),
        ("/..", .dotSegment),
        ("/.", .dotSegment),
        ("/v1/..", .dotSegment),
        ("/v1/.", .dotSegment),
        ("/v1/%2e%2e/admin", .dotSegment),
        ("/v1/%2E%2E/admin", .dotSegment),
        ("/v1/.%2e/admin", .dotSegment),
        ("/v1/%2e./admin", .dotSegment),
        ("/v1/%2E/x", .dotSegment),
        ("/v1/..;/admin", .dotSegmentWithParameters),
        ("/v1/.;/x", .dotSegmentWithParameters),
        ("/v1/..;jsessionid=1/admin", .dotSegmentWithParameters),
        ("/v1/%2e%2e;x/admin", .dotSegmentWithParameters),
        ("/v1/..%3b/admin", .dotSegmentWithParameters),
        ("/v1/..%3B/admin", .dotSegmentWithParameters),
        ("/v1/..;", .dotSegmentWithParameters),
        ("/a%2Fb", .encodedSlash),
        ("/a%2fb", .encodedSlash),
        ("/a%5Cb", .encodedBackslash),
        ("/a%5cb", .encodedBackslash),
        ("/a\\b", .backslash),
        ("/v1\\..\\admin", .backslash),
        ("//admin", .emptySegment),
        ("/v1//x", .emptySegment),
        ("/v1/x//", .emptySegment),
        ("/a%00b", .nul),
        ("/a\u{0}b", .nul),
        ("/caf\u{e9}", .nonASCII),
        ("/a\u{7f}", .controlCharacter),
        ("/a\tb", .controlCharacter),
        ("/%zz", .invalidEscape),
        ("/%4", .invalidEscape),
        ("/%", .invalidEscape),
        ("/%g0", .invalidEscape),
        ("v1/x", .notAbsolute),
        ("", .notAbsolute),
        // mixtures: the first offending form is named
        ("/%2E%2e;x/..%2F/%61dmin", .dotSegmentWithParameters),
        ("//%2e%2e/admin", .emptySegment),
        ("/%61/../b", .dotSegment),
        ("/a%2F..%2Fb", .encodedSlash),
    ]

    @Test(arguments: refused)
    func refusedForm(_ input: String, _ refusal: PathRefusal) {
        #expect(PathNormalizer.normalize(input[...]) == .failure(refusal))
    }

    @Test func mergeSlashes() {
        let merge: PathNormalizer.Relaxations = .mergeSlashes
        #expect(PathNormalizer.normalize("//a///b/", allowing: merge) == .success(.init(path: "/a/b/", used: .mergeSlashes)))
        #expect(PathNormalizer.normalize("/a/b", allowing: merge) == .success(.init(path: "/a/b", used: [])))
        #expect(PathNormalizer.normalize("//%61dmin", allowing: merge) == .success(.init(path: "/admin", used: .mergeSlashes)))
        // Merging never hides a dot segment, and does not allow an encoded slash.
        #expect(PathNormalizer.normalize("//..//admin", allowing: merge) == .failure(.dotSegment))
        #expect(PathNormalizer.normalize("//a%2Fb", allowing: merge) == .failure(.encodedSlash))
    }

    @Test func keepEscapedSlashes() {
        let keep: PathNormalizer.Relaxations = .keepEscapedSlashes
        #expect(PathNormalizer.normalize("/a%2fb", allowing: keep) == .success(.init(path: "/a%2Fb", used: .keepEscapedSlashes)))
        #expect(PathNormalizer.normalize("/a%5cb", allowing: keep) == .success(.init(path: "/a%5Cb", used: .keepEscapedSlashes)))
        // An upstream may decode %2F into a separator: dot segments between encoded slashes are still refused.
        #expect(PathNormalizer.normalize("/a%2F..%2Fb", allowing: keep) == .failure(.dotSegment))
        #expect(PathNormalizer.normalize("/a%5C.%5Cb", allowing: keep) == .failure(.dotSegment))
        #expect(PathNormalizer.normalize("/a%2F..", allowing: keep) == .failure(.dotSegment))
        #expect(PathNormalizer.normalize("/a%2F..;x%2Fb", allowing: keep) == .failure(.dotSegmentWithParameters))
        #expect(PathNormalizer.normalize("/a//b", allowing: keep) == .failure(.emptySegment))
        // Raw backslashes are never relaxed.
        #expect(PathNormalizer.normalize("/a\\b", allowing: .all) == .failure(.backslash))
    }

    @Test func both() {
        #expect(PathNormalizer.normalize("//x%2fy//z", allowing: .all) == .success(.init(path: "/x%2Fy/z", used: .all)))
    }

    @Test func onlyEmptySegmentsAndEscapedSlashesAreRelaxable() {
        let relaxable = Self.refused.filter { $0.1.relaxation != nil }.map(\.1)
        #expect(Set(relaxable) == [.encodedSlash, .encodedBackslash, .emptySegment])
        // Each refusal's text names the form, never the request.
        for (input, refusal) in Self.refused where input.count > 3 {
            #expect(!refusal.description.contains(input))
        }
    }
}

@Suite struct CanonicalHostTests {
    @Test(arguments: [
        ("http://blocked.example./x", "blocked.example"),
        ("http://API.Example.COM./x", "api.example.com"),
        ("http://api.example.com/", "api.example.com"),
        ("http://127.0.0.1./", "127.0.0.1"),
    ])
    func trailingDotIsRemoved(_ url: String, _ host: String) throws {
        #expect(try AbsoluteTarget.parse(url).host == host)
    }

    @Test(arguments: ["http://a.test../", "http://./", "http://.a.test/", "http://a..test/", "http://../"])
    func emptyLabelsAreRefused(_ url: String) {
        #expect(throws: HTTPParseError.self) { try AbsoluteTarget.parse(url) }
    }

    @Test func connectAuthorityToo() throws {
        let a = try AbsoluteTarget.parseAuthority(Array("Blocked.Example.:443".utf8))
        #expect(a.host == "blocked.example" && a.port == 443)
    }

    @Test func withPathKeepsTheQuery() throws {
        let t = try AbsoluteTarget.parse("http://a.test/%61b?x=%61&y")
        #expect(t.query == "?x=%61&y")
        #expect(t.withPath("/ab").pathAndQuery == "/ab?x=%61&y")
        #expect(try AbsoluteTarget.parse("http://a.test/p").withPath("/q").pathAndQuery == "/q")
    }
}
