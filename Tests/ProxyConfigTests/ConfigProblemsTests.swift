import Testing
@testable import ProxyConfig

/// One read reports every mistake (up to a cap), each with its line, and suggests the key that was meant.
@Suite struct ConfigProblemsTests {
    private func mistakes(_ text: String) -> ConfigError? {
        do {
            _ = try ConfigLoader.parse(text, file: "proxy.conf", baseDirectory: "/etc/mtls-proxy")
            return nil
        } catch {
            return error as? ConfigError
        }
    }

    @Test func everyMistakeInOneRunUnknownKeysFirstThenInLineOrder() throws {
        let error = try #require(mistakes("""
        [proxy]
        workers = "two"

        [upstream]
        connect_timeout = 5
        idle_timeot = "5s"

        [identities.us]
        cert = "a.pem"
        key = "a.key"
        prefer = "latest"

        [[route]]
        host = "a.test"
        identity = "eu"

        [log]
        level = "loud"
        """))
        #expect(error.all.map(\.key) == ["upstream.idle_timeot", "proxy.workers", "upstream.connect_timeout",
                                         "identities.us.prefer", "route[1].identity", "log.level"])
        #expect(error.all.map(\.line) == [6, 2, 5, 11, 15, 18])
        #expect(error.description.split(separator: "\n").count == 6)
        #expect(error.description.hasPrefix("proxy.conf:6: upstream.idle_timeot: unknown key; did you mean `idle_timeout`?"))
    }

    @Test func unknownKeySuggestsTheNearestValidOne() throws {
        let error = try #require(mistakes("[[route]]\nhost = \"a.test\"\nidentiy = \"us\"\n"))
        let typo = try #require(error.all.first { $0.key == "route[1].identiy" })
        #expect(typo.message.contains("did you mean `identity`?"), "\(typo.message)")
        #expect(typo.line == 3)
    }

    @Test func aMisspelledKeyComesBeforeTheMissingOneAndANamedRouteIsNamed() throws {
        let error = try #require(mistakes("""
        [identities.us]
        cert = "a.pem"
        key = "a.key"
        [[route]]
        host = "a.test"
        identity = "nobody"
        [[route]]
        name = "payments-eu"
        host = "b.test"
        identiy = "us"
        [[route]]
        name = "odd \\" name"
        host = "c.test"
        identity = "nobody"
        """))
        #expect(error.all.map(\.key) == ["route[2].identiy", "route[1].identity", "route[2].identity", "route[3].identity"])
        let lines = error.description.split(separator: "\n").map(String.init)
        #expect(lines[0].hasPrefix("proxy.conf:10: route \"payments-eu\" (route[2]).identiy: unknown key; did you mean `identity`?"))
        #expect(lines[1].hasPrefix("proxy.conf:6: route[1].identity: unknown identity"))
        #expect(lines[2].hasPrefix("proxy.conf:7: route \"payments-eu\" (route[2]).identity: missing"))
        // A name that cannot be quoted as it is (here with a quote) is not put in the message.
        #expect(lines[3].hasPrefix("proxy.conf:14: route[3].identity: unknown identity"))
    }

    @Test func aRouteNameThatWouldSpoofTheMessageIsNotQuoted() throws {
        // A right-to-left override, a newline escape and a very long name: each named route[1] only.
        for name in ["pay\u{202E}ue-stnemyap", "a\\nmtls-proxy: fake", String(repeating: "n", count: 65)] {
            let error = try #require(mistakes("[[route]]\nname = \"\(name)\"\nhost = \"a.test\"\nidentity = \"nobody\"\n"))
            #expect(error.description.hasPrefix("proxy.conf:4: route[1].identity: unknown identity"), "\(error.description)")
        }
    }

    /// An empty name would label the route "" in the access log, the metrics ("-") and the status page (whose
    /// row then never shows the route's traffic): a mistake, not a name.
    @Test func anEmptyRouteNameIsAMistake() throws {
        let error = try #require(mistakes("[[route]]\nname = \"\"\nhost = \"a.test\"\naction = \"deny\"\n"))
        #expect(error.key == "route[1].name")
        #expect(error.line == 2)
        #expect(error.message.contains("empty"), "\(error.description)")
    }

    /// A route's name labels its traffic in the access log, the metrics and the status page: two routes with one
    /// name would count as one. The second is a mistake that names the file and both routes (and the line of the
    /// first); so is a name spelled like another route's default label.
    @Test func aRouteNameUsedTwiceIsAMistakeNamingBothRoutes() throws {
        let error = try #require(mistakes("""
        [[route]]
        name = "bank API"
        host = "a.test"
        action = "deny"
        [[route]]
        host = "b.test"
        action = "deny"
        [[route]]
        name = "bank API"
        host = "c.test"
        action = "deny"
        [[route]]
        name = "route[2] b.test"
        host = "d.test"
        action = "deny"
        """))
        #expect(error.all.map(\.key) == ["route[3].name", "route[4].name"])
        #expect(error.all.map(\.line) == [9, 13])
        let lines = error.description.split(separator: "\n").map(String.init)
        #expect(lines[0].hasPrefix("proxy.conf:9: route \"bank API\" (route[3]).name: "), "\(lines[0])")
        #expect(lines[0].contains("route[1] (proxy.conf:2)"), "\(lines[0])")
        #expect(lines[1].contains("route[2] (proxy.conf:5)"), "\(lines[1])")
        // Different names, and unnamed routes for one host, are fine.
        #expect(mistakes("[[route]]\nname = \"a\"\nhost = \"a.test\"\naction = \"deny\"\n[[route]]\nname = \"b\"\nhost = \"a.test\"\naction = \"deny\"\n"
                         + "[[route]]\nhost = \"a.test\"\naction = \"deny\"\n[[route]]\nhost = \"a.test\"\naction = \"deny\"\n") == nil)
    }

    @Test func aDurationWrittenAsANumberSaysDurationsAreStrings() throws {
        let error = try #require(mistakes("[upstream]\nconnect_timeout = 5\n"))
        #expect(error.key == "upstream.connect_timeout")
        #expect(error.message.contains("durations are strings with a unit: write connect_timeout = \"5s\""))
    }

    @Test func aBrokenIdentityDoesNotAlsoBlameItsRoutes() throws {
        let error = try #require(mistakes("[identities.us]\ncert = \"a.pem\"\n[[route]]\nhost = \"a.test\"\nidentity = \"us\"\n"))
        #expect(error.all.map(\.key) == ["identities.us.key"])
    }

    @Test func aWrongTypeAndTheMissingValueItCausesAreOneMistake() throws {
        let error = try #require(mistakes("[[route]]\nhost = 5\naction = \"tls\"\n"))
        #expect(error.all.count == 1)
        #expect(error.message == "expected a string, got an integer")
    }

    @Test func reportingStopsAtTheCap() throws {
        let text = (1...30).map { "[[route]]\nhost = \"h\($0).test\"\naction = \"tls\"\nbogus\($0) = 1\n" }.joined()
        let error = try #require(mistakes(text))
        #expect(error.all.count == ConfigProblems.cap)
        #expect(error.truncated)
        #expect(error.description.hasSuffix("stopped after \(ConfigProblems.cap) mistakes; fix these and check again"))
    }

    @Test(arguments: [
        ("identiy", "identity"), ("conect_timeout", "connect_timeout"), ("Connect-Timeout", "connect_timeout"),
        ("idle_timeot", "idle_timeout"), ("hots", "host"), ("ca-file", "ca_file"),
    ])
    func nearestKey(_ typo: String, _ meant: String) {
        let keys = ["name", "host", "port", "path", "identity", "action", "connect", "ca_file", "min_tls",
                    "connect_timeout", "response_timeout", "idle_timeout", "allow_private"]
        #expect(NearestKey.suggestion(for: typo, among: keys) == meant)
    }

    @Test func noSuggestionForSomethingElseEntirely() {
        #expect(NearestKey.suggestion(for: "timeout", among: ["idle_timeout", "host"]) == nil)
        #expect(NearestKey.suggestion(for: "password", among: ["cert", "key", "p12"]) == nil)
    }

    @Test func locatorNamesKeysAsTheLoaderDoes() {
        let lines = TOMLKeyLocator("""
        # comment
        [proxy]
        listen = "127.0.0.1:3128"
        allow_clients = [
          "10.0.0.0/8",
        ]
        [[route]]
        host = "a.test"
        [[route]]
        host = "b.test"
        [[identities.us.certificates]]
        cert = "a.pem"
        """)
        #expect(lines.line(of: "proxy.listen") == 3)
        #expect(lines.line(of: "proxy.allow_clients[1]") == 4)
        #expect(lines.line(of: "route[2].host") == 10)
        #expect(lines.line(of: "route[2].identity") == 9)
        #expect(lines.line(of: "identities.us.certificates[1].cert") == 12)
        #expect(lines.line(of: "log.level") == nil)
    }
}
