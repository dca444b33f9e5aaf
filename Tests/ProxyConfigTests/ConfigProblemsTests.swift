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

    @Test func everyMistakeInOneRunInLineOrder() throws {
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
        #expect(error.all.map(\.key) == ["proxy.workers", "upstream.connect_timeout", "upstream.idle_timeot",
                                         "identities.us.prefer", "route[1].identity", "log.level"])
        #expect(error.all.map(\.line) == [2, 5, 6, 11, 15, 18])
        #expect(error.description.split(separator: "\n").count == 6)
        #expect(error.description.hasPrefix("proxy.conf:2: proxy.workers: expected an integer"))
    }

    @Test func unknownKeySuggestsTheNearestValidOne() throws {
        let error = try #require(mistakes("[[route]]\nhost = \"a.test\"\nidentiy = \"us\"\n"))
        let typo = try #require(error.all.first { $0.key == "route[1].identiy" })
        #expect(typo.message.contains("did you mean `identity`?"), "\(typo.message)")
        #expect(typo.line == 3)
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
