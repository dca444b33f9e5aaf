import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import ProxyConfig

private let identity = """
[identities.us]
cert = "certs/fusion-us.pem"
key = "certs/fusion-us.key"

"""

@Suite struct ConfigLoaderTests {
    @Test func defaultsForAnEmptyFile() throws {
        let c = try load("")
        #expect(c.proxy.listen == HostPort(host: "127.0.0.1", port: 3128))
        #expect(c.proxy.unmatched == .deny)
        #expect(c.proxy.maxHeaderBytes == 65536)
        #expect(c.upstream.trust == TrustSettings(caFile: nil, minTLS: .tls12))
        #expect(c.upstream.timeouts.connect == .seconds(5))
        #expect(c.upstream.timeouts.response == .seconds(60))
        #expect(c.upstream.timeouts.idle == .seconds(90))
        #expect(c.upstream.maxIdlePerHost == 64)
        #expect(c.routes.isEmpty)
    }

    @Test func readsTheExampleShape() throws {
        let c = try load(identity + """
        [proxy]
        listen = "127.0.0.1:3129"
        workers = 2
        unmatched = "tls"

        [upstream]
        ca_file = "ca.pem"
        min_tls = "1.3"
        connect_timeout = "250ms"
        response_timeout = "1m30s"

        [[route]]
        host = "api.mygreatbank.test"
        identity = "us"
        path = "/v1/"
        connect = "127.0.0.1:18443"
        response_timeout = "5s"

        [[route]]
        host = "*.example.com"
        port = 8443
        action = "tls"
        ca_file = "/abs/other.pem"

        [[route]]
        name = "everything else"
        host = "*"
        action = "deny"
        """)
        #expect(c.proxy.listen.port == 3129)
        #expect(c.proxy.workers == 2)
        #expect(c.proxy.unmatched == .tls)
        #expect(c.upstream.trust.caFile == "/etc/mtls-proxy/ca.pem")
        #expect(c.upstream.trust.minTLS == .tls13)
        #expect(c.upstream.timeouts.connect.milliseconds == 250)
        #expect(c.upstream.timeouts.response.milliseconds == 90_000)
        #expect(c.identities == [Identity(name: "us", certificates: [
            CertificateSource(cert: "/etc/mtls-proxy/certs/fusion-us.pem", key: "/etc/mtls-proxy/certs/fusion-us.key", configKey: "identities.us"),
        ])])
        #expect(c.routes.count == 3)
        let api = c.routes[0]
        #expect(api.action == .mtls(identity: "us"))
        #expect(api.pathPrefix == "/v1/")
        #expect(api.connect == HostPort(host: "127.0.0.1", port: 18443))
        #expect(api.timeouts.response == .seconds(5))
        #expect(api.timeouts.connect.milliseconds == 250)  // inherited
        #expect(api.trust.caFile == "/etc/mtls-proxy/ca.pem")
        #expect(c.routes[1].host == .subdomains(of: "example.com"))
        #expect(c.routes[1].port == 8443)
        #expect(c.routes[1].trust.caFile == "/abs/other.pem")
        #expect(c.routes[2].label == "everything else")
        #expect(c.routes[1].label == "route[2] *.example.com")
    }

    @Test func stagedCertificates() throws {
        let c = try load("""
        [[identities.us.certificates]]
        cert = "us-2026.pem"
        key = "us-2026.key"
        [[identities.us.certificates]]
        cert = "us-2025.pem"
        key = "us-2025.key"
        """)
        #expect(c.identities.first?.certificates.map(\.configKey) == ["identities.us.certificates[1]", "identities.us.certificates[2]"])
    }

    @Test func keysThePeopleKeepThem() throws {
        let c = try load("""
        [identities.pem]
        cert = "a.pem"
        key = "a.key"
        key_password_file = "secrets/a.pass"
        [identities.env]
        cert = "b.pem"
        key = "b.key"
        key_password_env = "B_PASSWORD"
        [identities.bundle]
        p12 = "c.p12"
        p12_password_file = "c.pass"
        prefer = "oldest"
        """)
        let byName = Dictionary(uniqueKeysWithValues: c.identities.map { ($0.name, $0) })
        #expect(byName["pem"]?.certificates.first?.files == .pem(cert: "/etc/mtls-proxy/a.pem", key: "/etc/mtls-proxy/a.key",
                                                                   keyPassword: .file("/etc/mtls-proxy/secrets/a.pass")))
        #expect(byName["env"]?.certificates.first?.files == .pem(cert: "/etc/mtls-proxy/b.pem", key: "/etc/mtls-proxy/b.key",
                                                                   keyPassword: .environment("B_PASSWORD")))
        #expect(byName["bundle"]?.certificates.first?.files == .pkcs12(path: "/etc/mtls-proxy/c.p12", password: .file("/etc/mtls-proxy/c.pass")))
        #expect(byName["bundle"]?.prefer == .oldest)
        #expect(byName["pem"]?.prefer == .newest)
    }

    @Test(arguments: [
        ("[identities.us]\np12 = \"a.p12\"\ncert = \"a.pem\"", "identities.us.p12", "not both"),
        ("[identities.us]\np12 = \"a.p12\"\nkey_password_file = \"x\"", "identities.us.p12", "p12_password_file"),
        ("[identities.us]\ncert = \"a.pem\"\nkey = \"a.key\"\nkey_password_file = \"x\"\nkey_password_env = \"Y\"", "identities.us.key_password_env", "not both"),
        ("[identities.us]\ncert = \"a.pem\"\nkey = \"a.key\"\np12_password_file = \"x\"", "identities.us.p12_password_file", "only for a p12 bundle"),
        ("[identities.us]\ncert = \"a.pem\"\nkey = \"a.key\"\nprefer = \"latest\"", "identities.us.prefer", "expected \"newest\""),
        ("[identities.us]\nkey_password_file = \"x\"", "identities.us.cert", "a password is set"),
        ("[[identities.us.certificates]]\ncert = \"a.pem\"", "identities.us.certificates[1].key", "missing"),
        ("[proxy]\nwarn_days = -1", "proxy.warn_days", "expected 0 to 3650"),
        ("[upstream]\nnameservers = [\"dns.example\"]", "upstream.nameservers[1]", "numeric address"),
    ])
    func reportsKeyMistakes(_ text: String, _ key: String, _ fragment: String) throws {
        let error = try #require(configError(text))
        #expect(error.key == key)
        #expect(error.message.contains(fragment), "\(error.message)")
    }

    @Test(arguments: [
        ("[proxy]\nlisten = \"nowhere\"", "proxy.listen", "expected an address and port"),
        ("[proxy]\nlisten = \"0.0.0.0:3128\"", "proxy.listen", "not a loopback address; set proxy.allow_clients"),
        ("[proxy]\nworkers = \"two\"", "proxy.workers", "expected an integer, got a string"),
        ("[proxy]\nunmatched = \"allow\"", "proxy.unmatched", "expected \"deny\" or \"tls\""),
        ("[proxy]\nlisten_addr = \"127.0.0.1:1\"", "proxy.listen_addr", "unknown key; expected one of:"),
        ("[proxy]\nallow_clients = [\"10.0.0.0/33\"]", "proxy.allow_clients[1]", "expected an address range"),
        ("[upstream]\nconnect_timeout = \"5 seconds\"", "upstream.connect_timeout", "expected a positive duration"),
        ("[upstream]\nconnect_timeout = 5", "upstream.connect_timeout", "durations are strings with a unit: write connect_timeout = \"5s\""),
        ("[upstream]\nmin_tls = \"1.1\"", "upstream.min_tls", "expected \"1.2\" or \"1.3\""),
        ("[identities.us]\ncert = \"a.pem\"", "identities.us.key", "missing"),
        ("[identities.us]\nkey = \"a.key\"", "identities.us.cert", "missing"),
        ("[identities.us]\ncert = \"a.pem\"\nkey = \"a.key\"\npassword = \"x\"", "identities.us.password", "unknown key"),
        ("[[route]]\nidentity = \"us\"", "route[1].host", "missing"),
        ("[[route]]\nhost = \"a.test\"", "route[1].identity", "missing: set identity"),
        ("[[route]]\nhost = \"a.test\"\nidentity = \"eu\"", "route[1].identity", "unknown identity \"eu\""),
        ("[[route]]\nhost = \"a.test\"\naction = \"allow\"", "route[1].action", "expected \"tls\" or \"deny\""),
        ("[[route]]\nhost = \"a b\"\naction = \"tls\"", "route[1].host", "expected a host name"),
        ("[[route]]\nhost = \"a.test\"\naction = \"tls\"\nport = 70000", "route[1].port", "expected 1 to 65535"),
        ("[[route]]\nhost = \"a.test\"\naction = \"tls\"\npath = \"v1\"", "route[1].path", "starting with /"),
        ("[[route]]\nhost = \"a.test\"\naction = \"tls\"\nconnect = \"db.internal:5432\"", "route[1].connect", "numeric address"),
        ("[[route]]\nhost = \"a.test\"\naction = \"tls\"\n[[route]]\nhost = \"b.test\"\naction = \"tls\"\nfoo = 1", "route[2].foo", "unknown key"),
        ("[route]\nhost = \"a.test\"", "route", "expected [[route]] tables, got a table"),
        ("[mystery]\nx = 1", "mystery", "unknown key"),
    ])
    func reportsFileKeyAndExpectation(_ text: String, _ key: String, _ fragment: String) throws {
        let error = try #require(configError(text))
        #expect(error.file == "proxy.conf")
        #expect(error.key == key)
        #expect(error.message.contains(fragment), "\(error.message)")
        // file:line: key: message, the line being the key's (or its table's, for a missing key).
        #expect(error.line != nil)
        #expect(error.description.hasPrefix("proxy.conf:\(error.line ?? 0): \(key): "), "\(error.description)")
    }

    @Test func routeWithBothIdentityAndAction() throws {
        let error = try #require(configError(identity + "[[route]]\nhost = \"a.test\"\nidentity = \"us\"\naction = \"deny\""))
        #expect(error.key == "route[1].action")
        #expect(error.message.contains("not both"))
    }

    @Test func tomlSyntaxErrorsNameTheLine() throws {
        let error = try #require(configError("[proxy]\nlisten = \n"))
        #expect(error.key == "")
        #expect(error.message.contains("line 2"))
    }

    @Test func nonLoopbackListenWithAllowClients() throws {
        let c = try load("[proxy]\nlisten = \"0.0.0.0:3128\"\nallow_clients = [\"10.0.0.0/8\", \"fd00::/8\"]")
        #expect(c.proxy.allowClients.count == 2)
    }

    @Test func missingFileIsReported() {
        #expect(throws: ConfigError.self) { try ConfigLoader.load(file: "/nonexistent/proxy.conf") }
    }
}

@Suite struct ValueParsingTests {
    @Test func durations() {
        #expect(TimeSpan.parse("5s")?.milliseconds == 5000)
        #expect(TimeSpan.parse("250ms")?.milliseconds == 250)
        #expect(TimeSpan.parse("2m")?.milliseconds == 120_000)
        #expect(TimeSpan.parse("1h")?.milliseconds == 3_600_000)
        #expect(TimeSpan.parse("1m30s")?.milliseconds == 90_000)
        #expect(TimeSpan.parse("5") == nil)
        #expect(TimeSpan.parse("s") == nil)
        #expect(TimeSpan.parse("") == nil)
        #expect(TimeSpan.parse("5 s") == nil)
        #expect(TimeSpan.parse("-5s") == nil)
    }

    @Test func addresses() {
        #expect(HostPort.parse("127.0.0.1:3128") == HostPort(host: "127.0.0.1", port: 3128))
        #expect(HostPort.parse("[::1]:3128") == HostPort(host: "::1", port: 3128))
        #expect(HostPort.parse("localhost:3128") == HostPort(host: "127.0.0.1", port: 3128))
        #expect(HostPort.parse("127.0.0.1") == nil)
        #expect(HostPort.parse("127.0.0.1:99999") == nil)
        #expect(HostPort.parse("example.com:80") == nil)
        #expect(HostPort.parse("::1:80") == nil)
    }

    @Test func ipAddresses() {
        #expect(IPAddress("10.1.2.3")?.bytes == [10, 1, 2, 3])
        #expect(IPAddress("::1")?.isLoopback == true)
        #expect(IPAddress("::ffff:127.0.0.1")?.isLoopback == true)
        #expect(IPAddress("127.255.0.9")?.isLoopback == true)
        #expect(IPAddress("128.0.0.1")?.isLoopback == false)
        #expect(IPAddress("fe80::1:2")?.bytes.count == 16)
        #expect(IPAddress("1.2.3") == nil)
        #expect(IPAddress("1.2.3.256") == nil)
        #expect(IPAddress("01.2.3.4") == nil)
        #expect(IPAddress("1::2::3") == nil)
        #expect(IPAddress("12345::") == nil)
    }

    @Test func cidrs() throws {
        let ten = try #require(CIDR.parse("10.0.0.0/8"))
        #expect(ten.contains(IPAddress("10.200.1.1")!))
        #expect(!ten.contains(IPAddress("11.0.0.1")!))
        #expect(ten.contains(IPAddress("::ffff:10.0.0.1")!))
        let v6 = try #require(CIDR.parse("fd00::/8"))
        #expect(v6.contains(IPAddress("fd12::1")!))
        #expect(!v6.contains(IPAddress("fe80::1")!))
        let odd = try #require(CIDR.parse("192.168.0.0/23"))
        #expect(odd.contains(IPAddress("192.168.1.7")!))
        #expect(!odd.contains(IPAddress("192.168.2.7")!))
        #expect(CIDR.parse("10.0.0.0/x") == nil)
    }
}

@Suite struct ExampleConfigTests {
    @Test func theShippedExampleIsValid() throws {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        let c = try ConfigLoader.load(file: path + "/proxy.conf.example")
        #expect(c.proxy.listen == HostPort(host: "127.0.0.1", port: 3128))
        #expect(c.identities.map(\.name) == ["eu", "us"])
        #expect(c.identities[0].certificates.count == 2)
        #expect(c.routes.map(\.action) == [.mtls(identity: "eu"), .mtls(identity: "us"), .tls, .deny])
        #expect(c.routes[1].trust.caFile == nil)
        #expect(c.listeners.map(\.upstreamURL) == ["https://api.mygreatbank.test"])
        #expect(c.admin?.listen == HostPort(host: "127.0.0.1", port: 9901))
        #expect(c.log.access == .stdout && c.log.format == .json && c.log.level == .info)
        #expect(c.proxy.drainTimeout == .seconds(30))
        #expect(c.intercept?.caKey.hasSuffix("/state/local-ca.key") == true)
        #expect(c.intercept?.leafValidity == .seconds(86_400))
    }
}

@Suite struct OperationsConfigTests {
    @Test func listenersAdminAndLog() throws {
        let c = try load("""
        [[listener]]
        listen = "127.0.0.1:9001"
        upstream = "https://API.example.com:8443/"
        [admin]
        listen = "[::1]:9901"
        [log]
        access = "logs/access.log"
        format = "text"
        level = "debug"
        """)
        #expect(c.listeners == [FixedListener(listen: HostPort(host: "127.0.0.1", port: 9001), host: "api.example.com", port: 8443, configKey: "listener[1]")])
        #expect(c.admin?.listen == HostPort(host: "::1", port: 9901))
        #expect(c.log.access == .file("/etc/mtls-proxy/logs/access.log"))
        #expect(c.log.format == .text)
        #expect(c.log.level == .debug)
    }

    @Test(arguments: [
        ("[[listener]]\nlisten = \"127.0.0.1:9001\"", "listener[1].upstream", "missing"),
        ("[[listener]]\nlisten = \"127.0.0.1:9001\"\nupstream = \"http://a.test\"", "listener[1].upstream", "expected https://HOST"),
        ("[[listener]]\nlisten = \"127.0.0.1:9001\"\nupstream = \"https://a.test/v1\"", "listener[1].upstream", "no path"),
        ("[[listener]]\nlisten = \"10.1.2.3:9001\"\nupstream = \"https://a.test\"", "listener[1].listen", "not a loopback address"),
        ("[[listener]]\nlisten = \"127.0.0.1:3128\"\nupstream = \"https://a.test\"", "listener[1].listen", "already used"),
        ("[admin]\nlisten = \"0.0.0.0:9901\"", "admin.listen", "set admin.allow_clients"),
        ("[admin]\nport = 9901", "admin.port", "unknown key"),
        ("[log]\nformat = \"xml\"", "log.format", "expected \"json\" or \"text\""),
        ("[log]\nlevel = \"loud\"", "log.level", "expected one of trace"),
        ("[proxy]\ndrain_timeout = \"soon\"", "proxy.drain_timeout", "expected a positive duration"),
    ])
    func reportsMistakes(_ text: String, _ key: String, _ fragment: String) throws {
        // [admin] port = 9901 is two mistakes (an unknown key, no listen): this one is among them.
        let error = try #require(configError(text)?.all.first { $0.key == key })
        #expect(error.message.contains(fragment), "\(error.message)")
    }

    @Test func environmentOverrides() throws {
        var c = try load("")
        try EnvironmentOverrides.apply(["MTLS_PROXY_LISTEN": "127.0.0.1:4000", "MTLS_PROXY_LOG_LEVEL": "WARNING"], to: &c)
        #expect(c.proxy.listen.port == 4000)
        #expect(c.log.level == .warning)
        #expect(EnvironmentOverrides.configPath(["MTLS_PROXY_CONFIG": "/x.conf"]) == "/x.conf")
        #expect(EnvironmentOverrides.configPath([:]) == nil)
        #expect(throws: ConfigError.self) { try EnvironmentOverrides.apply(["MTLS_PROXY_LISTEN": "nowhere"], to: &c) }
        #expect(throws: ConfigError.self) { try EnvironmentOverrides.apply(["MTLS_PROXY_LISTEN": "0.0.0.0:80"], to: &c) }
    }
}

/// Malformed keys that made the TOML parser abort the process (found by fuzzing) are reported instead.
@Suite struct TOMLKeyCheckTests {
    @Test(arguments: ["[.a]\n", "[[.0.1:3128route]]\nhost = \"*\"\n", "[a..b]\n", "[a.]\n", "a. = 1\n", ".a = 1\n", "[proxy]\n= 3\n", "[\"a]\n"])
    func malformedKeysAreErrorsNotCrashes(_ text: String) throws {
        let error = try #require(configError(text))
        #expect(error.message.hasPrefix("line "), "\(error.message)")
    }

    @Test func validKeysPass() throws {
        #expect(TOMLKeyCheck.firstProblem("""
        # comment
        [proxy]
        listen = "127.0.0.1:3128"   # trailing
        [identities."us-east".certificates]
        a.b . c = 'x'
        "quoted key" = "v = [.x]"
        [[route]]
        host = "*"
        text = \"\"\"
        [.not a header]
        \"\"\"
        list = [
          "10.0.0.0/8",   # a comment ]
          "fd00::/8",
        ]
        inline = { a = 1, b = [1,
          2] }
        after = 1
        """) == nil)
        #expect(TOMLKeyCheck.firstProblem("list = [\n 1,\n]\n.bad = 1\n")?.line == 4)
    }

    /// With CRLF line ends ("\r\n" is one Swift Character) the check once saw the whole file as one line, so a
    /// malformed key after the first line reached the TOML parser, which aborted the process.
    @Test func crlfLinesAreCheckedOneByOne() throws {
        #expect(TOMLKeyCheck.firstProblem("[proxy]\r\nworkers = 1\r\n[.a]\r\n")?.line == 3)
        #expect(TOMLKeyCheck.firstProblem("[proxy]\r\nworkers = 1\r\n\r\nlist = [\r\n 1,\r\n]\r\n") == nil)
        let located = TOMLKeyLocator("[proxy]\r\nworkers = 1\r\n[[route]]\r\nhost = \"a\"\r\n")
        #expect(located.line(of: "route[1].host") == 4)
    }
}

/// A config file over the size the loader reads says so (it once said "cannot read the config file:" and
/// whatever errno held, such as "Inappropriate ioctl for device").
@Suite struct ConfigFileSizeTests {
    @Test func anOversizedConfigIsNamedAsSuch() throws {
        let path = "/tmp/mtls-proxy-config-size-\(getpid()).conf"
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
        #expect(fd >= 0)
        defer { unlink(path) }
        #expect(ftruncate(fd, off_t(17 << 20)) == 0)  // sparse: reads as zeros, costs no disk
        close(fd)
        do {
            _ = try ConfigLoader.load(file: path)
            Issue.record("an oversized config loaded")
        } catch let error as ConfigError {
            #expect(error.message.contains("larger than 16 MiB"), "\(error.message)")
        }
    }
}
