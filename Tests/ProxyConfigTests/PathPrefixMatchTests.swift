import Testing
@testable import ProxyConfig

/// Route path prefixes match whole segments unless a route asks for a plain string prefix
/// (`path_prefix_match = "string"`): `/payments/eu` is not a prefix of `/payments/europe`.
@Suite struct PathPrefixMatchTests {
    static func config(euRule: String = "") -> String { """
        [identities.eu]
        cert = "eu.pem"
        key = "eu.key"
        [identities.us]
        cert = "us.pem"
        key = "us.key"
        [[route]]
        host = "api.test"
        path = "/payments/eu"
        identity = "eu"
        \(euRule)
        [[route]]
        host = "api.test"
        path = "/v2/"
        action = "tls"
        [[route]]
        host = "api.test"
        identity = "us"
        """ }
    let config = Self.config()

    @Test func aPrefixMatchesWholeSegmentsByDefault() throws {
        let router = try load(config).router
        func index(_ path: Substring) -> Int? { router.match(host: "api.test", port: 443, path: path).route?.index }
        #expect(index("/payments/eu") == 1)
        #expect(index("/payments/eu/") == 1)
        #expect(index("/payments/eu/1") == 1)
        #expect(index("/payments/europe") == 3)
        #expect(index("/payments/europe/1") == 3)
        #expect(index("/payments/eu-west/1") == 3)
        #expect(index("/payments") == 3)
        // A prefix ending in / needs something after the slash, as before.
        #expect(index("/v2/") == 2)
        #expect(index("/v2/x") == 2)
        #expect(index("/v2") == 3)
        #expect(index("/v2x") == 3)
    }

    @Test func aRouteMayAskForAStringPrefix() throws {
        let text = Self.config(euRule: "path_prefix_match = \"string\"")
        let router = try load(text).router
        #expect(router.match(host: "api.test", port: 443, path: "/payments/europe/1").route?.index == 1)
        #expect(router.match(host: "api.test", port: 443, path: "/payments/eu").route?.index == 1)
        #expect(router.match(host: "api.test", port: 443, path: "/payments/e").route?.index == 3)
        let segment = try load(Self.config(euRule: "path_prefix_match = \"segment\""))
        #expect(segment.router.match(host: "api.test", port: 443, path: "/payments/europe/1").route?.index == 3)
    }

    @Test func explainNamesTheRule() throws {
        let router = try load(config).router
        let explained = router.explain(host: "api.test", port: 443, path: "/payments/europe/1")
        #expect(explained.match.route?.index == 3)
        let skip = try #require(explained.skipped.first)
        #expect(skip.reason.description.contains("whole segments"), "\(skip.reason)")
        let hit = router.match(host: "api.test", port: 443, path: "/payments/eu/1")
        #expect(hit.reason.contains("path prefix /payments/eu (whole segments)"), "\(hit.reason)")
    }

    @Test(arguments: [
        ("path_prefix_match = \"prefix\"", "route[1].path_prefix_match", "expected \"segment\""),
        ("path_prefix_match = true", "route[1].path_prefix_match", "expected a string"),
    ])
    func mistakes(_ line: String, _ key: String, _ fragment: String) throws {
        let e = try #require(configError("[[route]]\nhost = \"a.test\"\npath = \"/a\"\naction = \"deny\"\n\(line)\n"))
        #expect(e.key == key)
        #expect(e.message.contains(fragment), "\(e.message)")
    }

    @Test func aMatchRuleWithoutAPathIsAMistake() throws {
        let e = try #require(configError("[[route]]\nhost = \"a.test\"\naction = \"deny\"\npath_prefix_match = \"string\"\n"))
        #expect(e.key == "route[1].path_prefix_match")
        #expect(e.message.contains("path"), "\(e.message)")
    }
}
