import Testing
@testable import ProxyConfig

/// `proxy` and `proxy_credentials_file` in `[upstream]` and routes: parsing, inheritance, and the combinations
/// refused because a corporate proxy would quietly void a guard the user configured.
@Suite struct EgressConfigTests {
    let route = "[[route]]\nhost = \"api.example.com\"\naction = \"tls\"\n"

    @Test func directByDefault() throws {
        let c = try load(route)
        #expect(c.upstream.egress == .direct)
        #expect(c.routes[0].egress == .direct)
    }

    @Test func routesInheritUpstreamProxyAndItsCredentials() throws {
        let c = try load("""
            [upstream]
            proxy = "http://Corp-Proxy.example:3128/"
            proxy_credentials_file = "corp.cred"
            \(route)
            [[route]]
            host = "b.example.com"
            action = "tls"
            proxy = "direct"
            [[route]]
            host = "c.example.com"
            action = "tls"
            proxy = "http://other-proxy:8080"
            [[route]]
            host = "d.example.com"
            action = "tls"
            proxy = "http://corp-proxy.example:3128"
            [[route]]
            host = "e.example.com"
            action = "tls"
            proxy_credentials_file = "/etc/e.cred"
            """)
        let corp = EgressProxy(host: "corp-proxy.example", port: 3128, credentialsFile: "/etc/mtls-proxy/corp.cred")
        #expect(c.upstream.egress == .proxy(corp))
        #expect(c.routes[0].egress == .proxy(corp))
        #expect(c.routes[1].egress == .direct)
        // Credentials for one proxy are never sent to another.
        #expect(c.routes[2].egress == .proxy(EgressProxy(host: "other-proxy", port: 8080)))
        #expect(c.routes[3].egress == .proxy(corp))
        #expect(c.routes[4].egress == .proxy(EgressProxy(host: "corp-proxy.example", port: 3128, credentialsFile: "/etc/e.cred")))
        #expect(c.router.match(host: "zz.example", port: 443, path: "/").egress == .proxy(corp))
        #expect(c.router.match(host: "b.example.com", port: 443, path: "/").egress == .direct)
    }

    @Test(arguments: [
        ("https://corp:3128", "https:// and socks proxies are not supported"),
        ("socks5://corp:1080", "expected \"direct\" or an http:// URL"),
        ("http://alice:pw@corp:3128", "credentials do not go in the proxy URL"),
        ("http://corp", "needs its port"),
        ("http://corp:0", "port must be 1 to 65535"),
        ("http://corp:99999", "port must be 1 to 65535"),
        ("http://corp:3128/path", "no path"),
        ("http://bad host:3128", "host name or an IP address"),
    ])
    func badProxyURLs(text: String, expected: String) {
        let e = configError("[upstream]\nproxy = \"\(text)\"\n" + route)
        #expect(e?.key == "upstream.proxy")
        #expect(e?.message.contains(expected) == true, "\(String(describing: e?.message))")
        // A URL with credentials is never echoed back.
        #expect(e?.message.contains("pw@") == false)
    }

    @Test func ipv6ProxyAddress() throws {
        let c = try load("[upstream]\nproxy = \"http://[::1]:3128\"\n" + route)
        #expect(c.upstream.egress == .proxy(EgressProxy(host: "::1", port: 3128)))
        #expect(c.upstream.egress.description == "http://[::1]:3128")
    }

    @Test func credentialsWithoutAProxyAreRefused() {
        let e = configError("[upstream]\nproxy_credentials_file = \"c\"\n" + route)
        #expect(e?.key == "upstream.proxy_credentials_file")
        let r = configError("[upstream]\nproxy = \"http://p:1\"\n[[route]]\nhost = \"a.example\"\naction = \"tls\"\nproxy = \"direct\"\nproxy_credentials_file = \"c\"\n")
        #expect(r?.key == "route[1].proxy_credentials_file")
    }

    @Test func connectThroughACorporateProxyIsRefused() {
        let e = configError("[upstream]\nproxy = \"http://p:3128\"\n[[route]]\nhost = \"a.example\"\naction = \"tls\"\nconnect = \"127.0.0.1:8443\"\n")
        #expect(e?.key == "route[1].connect")
        #expect(e?.message.contains("proxy = \"direct\"") == true)
        // With proxy = "direct" the route dials its address.
        #expect(configError("[upstream]\nproxy = \"http://p:3128\"\n[[route]]\nhost = \"a.example\"\naction = \"tls\"\nconnect = \"127.0.0.1:8443\"\nproxy = \"direct\"\n") == nil)
    }

    @Test func anSSRFGuardAskedForByNameIsNotQuietlyVoided() {
        // [upstream] allow_private = false with [upstream] proxy.
        let a = configError("[upstream]\nproxy = \"http://p:3128\"\nallow_private = false\n" + route)
        #expect(a?.key == "upstream.allow_private")
        #expect(a?.message.contains("cannot see them") == true)
        // A route's own allow_private = false through a proxy.
        let b = configError("[upstream]\nproxy = \"http://p:3128\"\n" + route + "allow_private = false\n")
        #expect(b?.key == "route[1].allow_private")
        // [upstream] allow_private = false, and a route that names a proxy of its own.
        let c = configError("[upstream]\nallow_private = false\n" + route + "proxy = \"http://p:3128\"\n")
        #expect(c?.key == "route[1].proxy")
        // ... unless that route says it accepts it.
        #expect(configError("[upstream]\nallow_private = false\n" + route + "proxy = \"http://p:3128\"\nallow_private = true\n") == nil)
        // The default guard (not written out) goes with a proxy: documented, routing stays deny-by-default.
        #expect(configError("[upstream]\nproxy = \"http://p:3128\"\n" + route) == nil)
        // A deny route never dials: nothing to refuse.
        #expect(configError("[upstream]\nproxy = \"http://p:3128\"\n[[route]]\nhost = \"x.example\"\naction = \"deny\"\nallow_private = false\n") == nil)
    }

    @Test func aCorporateProxyThatIsThisProxyIsRefused() {
        let e = configError("[proxy]\nlisten = \"127.0.0.1:3128\"\n[upstream]\nproxy = \"http://localhost:3128\"\n" + route)
        #expect(e?.key == "upstream.proxy")
        #expect(e?.message.contains("own address") == true)
        let r = configError("[proxy]\nlisten = \"127.0.0.1:3128\"\n" + route + "proxy = \"http://127.0.0.1:3128\"\n")
        #expect(r?.key == "route[1].proxy")
        #expect(configError("[proxy]\nlisten = \"127.0.0.1:3128\"\n[upstream]\nproxy = \"http://127.0.0.1:3129\"\n" + route) == nil)
    }

    @Test func credentialsFileLines() {
        #expect(EgressCredentials.authorization(fileText: "alice:s3cret\n") == .success("Basic YWxpY2U6czNjcmV0"))
        #expect(EgressCredentials.authorization(fileText: "alice:pa:ss\r\n") == .success("Basic " + EgressCredentials.base64Encode(Array("alice:pa:ss".utf8))))
        #expect(EgressCredentials.authorization(fileText: "") == .failure(.empty))
        #expect(EgressCredentials.authorization(fileText: "nocolon\n") == .failure(.noColon))
        #expect(EgressCredentials.authorization(fileText: ":pw\n") == .failure(.emptyUser))
        #expect(EgressCredentials.authorization(fileText: "a:b\nc:d\n") == .failure(.moreLines))
        #expect(EgressCredentials.authorization(fileText: "a:b\u{7}c\n") == .failure(.controlCharacter))
        for problem in [EgressCredentials.Problem.empty, .noColon, .emptyUser, .controlCharacter, .moreLines] {
            #expect(problem.description.contains("user:password"))
        }
    }

    @Test func base64MatchesKnownVectors() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            #expect(EgressCredentials.base64Encode(Array(plain.utf8)) == encoded)
        }
    }
}
