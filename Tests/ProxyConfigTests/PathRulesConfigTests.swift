import Testing
@testable import ProxyConfig

/// The route keys for request-path spellings (`merge_slashes`, `escaped_slashes`) and the canonical form of
/// route path prefixes and hosts.
@Suite struct PathRulesConfigTests {
    @Test func strictByDefault() throws {
        let c = try load("[[route]]\nhost = \"a.test\"\naction = \"tls\"\n")
        #expect(c.upstream.pathRules == PathRules())
        #expect(c.routes[0].pathRules == PathRules(mergeSlashes: false, escapedSlashes: .refuse))
    }

    @Test func routesInheritFromUpstreamAndMayOverride() throws {
        let c = try load("""
            [upstream]
            merge_slashes = true
            [[route]]
            host = "a.test"
            action = "tls"
            [[route]]
            host = "b.test"
            action = "tls"
            merge_slashes = false
            escaped_slashes = "keep"
            """)
        #expect(c.upstream.pathRules == PathRules(mergeSlashes: true))
        #expect(c.routes[0].pathRules == PathRules(mergeSlashes: true))
        #expect(c.routes[1].pathRules == PathRules(mergeSlashes: false, escapedSlashes: .keep))
        #expect(c.router.match(host: "zz.test", port: 443, path: "/").pathRules == PathRules(mergeSlashes: true))
    }

    @Test func prefixesAreKeptInCanonicalForm() throws {
        let c = try load("[[route]]\nhost = \"a.test\"\npath = \"/%61dmin/%7euser%3a\"\naction = \"deny\"\n")
        #expect(c.routes[0].pathPrefix == "/admin/~user%3A")
        let keep = try load("[[route]]\nhost = \"a.test\"\npath = \"/g%2fp\"\nescaped_slashes = \"keep\"\naction = \"tls\"\n")
        #expect(keep.routes[0].pathPrefix == "/g%2Fp")
    }

    @Test(arguments: [
        ("[upstream]\nescaped_slashes = \"decode\"", "upstream.escaped_slashes", "expected \"refuse\""),
        ("[upstream]\nmerge_slashes = \"yes\"", "upstream.merge_slashes", "expected true or false"),
        ("[[route]]\nhost = \"a.test\"\naction = \"tls\"\nescaped_slashes = 1", "route[1].escaped_slashes", "expected a string"),
        ("[[route]]\nhost = \"a.test\"\naction = \"deny\"\npath = \"/v1/../admin\"", "route[1].path", "dot segment"),
        ("[[route]]\nhost = \"a.test\"\naction = \"deny\"\npath = \"//admin\"", "route[1].path", "empty path segment"),
        ("[[route]]\nhost = \"a.test\"\naction = \"deny\"\npath = \"/a%2Fb\"", "route[1].path", "encoded slash"),
        ("[[route]]\nhost = \"a.test\"\naction = \"deny\"\npath = \"/a\\\\b\"", "route[1].path", "backslash"),
        ("[[route]]\nhost = \"a.test\"\naction = \"deny\"\npath = \"/caf\u{e9}\"", "route[1].path", "non-ASCII"),
        ("[[route]]\nhost = \"a..test\"\naction = \"deny\"", "route[1].host", "expected a host name"),
    ])
    func mistakes(_ text: String, _ key: String, _ fragment: String) throws {
        let e = try #require(configError(text))
        #expect(e.key == key)
        #expect(e.message.contains(fragment), "\(e.message)")
    }

    @Test func trailingDotInHostsAndListenerUpstreams() throws {
        let c = try load("""
            [[route]]
            host = "Blocked.Example."
            action = "deny"
            [[listener]]
            listen = "127.0.0.1:9001"
            upstream = "https://api.example.com."
            """)
        #expect(c.routes[0].host == .exact("blocked.example"))
        #expect(c.listeners[0].host == "api.example.com")
    }
}
