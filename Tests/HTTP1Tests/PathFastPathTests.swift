import Testing
@testable import HTTP1

/// The normaliser's allocation-free answer for paths already canonical agrees with the full pass everywhere.
@Suite struct PathFastPathTests {
    @Test func fastAnswerAgreesWithTheFullPass() {
        var inputs = PathNormalizerTests.canonical.map(\.0) + PathNormalizerTests.refused.map(\.0)
        let pieces = ["/", "a", ".", "..", ";", "%2e", "%41", "%2F", "\\", " ", "~", "-", "_", "x.y", "?", "\u{7F}", "\u{01}", "é", "//"]
        for a in pieces { for b in pieces { for c in pieces { inputs.append("/" + a + b + c) } } }
        inputs += ["", "a", ".", "/.a", "/a/.b", "/a./b", "/a/..b/c", "/a/b.", "/a/b..", "/a/.", "/a/.."]
        for input in inputs {
            for allowing in [PathNormalizer.Relaxations(), .mergeSlashes, .keepEscapedSlashes, .all] {
                #expect(PathNormalizer.normalize(input[...], allowing: allowing)
                        == PathNormalizer.normalizeFully(input[...], allowing: allowing), "\(input) \(allowing.rawValue)")
            }
        }
    }

    @Test func plainlyCanonicalPathsAreTakenAsTheyAre() {
        for path in ["/", "/v1/accounts", "/a.b/c~d-e_f", "/a;b=c/d", "/x?y"] {
            #expect(PathNormalizer.isPlainlyCanonical(path[...]), "\(path)")
        }
        for path in ["", "a", "/a/./b", "/a/../b", "/.", "/a//b", "/%41", "/a\\b", "/a b", "/\u{7F}", "/é", "/a/.hidden"] {
            #expect(!PathNormalizer.isPlainlyCanonical(path[...]), "\(path)")
        }
    }

    @Test func aCanonicalPathKeepsTheTarget() throws {
        let target = try AbsoluteTarget.parse("http://a.test/a/b?q=1")
        #expect(target.withPath("/a/b") == target)
        #expect(target.withPath("/A/b").pathAndQuery == "/A/b?q=1")
    }
}
