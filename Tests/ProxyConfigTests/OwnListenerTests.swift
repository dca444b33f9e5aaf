import Testing
@testable import ProxyConfig

private let threeListeners = """
[proxy]
listen = "127.0.0.1:3128"
[[listener]]
listen = "127.0.0.1:9001"
upstream = "https://api.mygreatbank.test"
[[listener]]
listen = "[::1]:9002"
upstream = "https://files.test:8443"
rewrite_location = false
[admin]
listen = "127.0.0.1:9901"
"""

@Suite struct OwnListenerTests {
    @Test func findsTheListenerAForwardRequestNames() throws {
        let c = try load(threeListeners)
        #expect(c.ownListener(host: "127.0.0.1", port: 9001)?.name == "listener[1]")
        #expect(c.ownListener(host: "127.0.0.1", port: 9001)?.upstreamURL == "https://api.mygreatbank.test")
        #expect(c.ownListener(host: "localhost", port: 9001)?.name == "listener[1]")
        #expect(c.ownListener(host: "localhost.", port: 9001)?.name == "listener[1]")
        #expect(c.ownListener(host: "::1", port: 9002)?.name == "listener[2]")
        #expect(c.ownListener(host: "[::1]", port: 9002)?.name == "listener[2]")
        #expect(c.ownListener(host: "localhost", port: 9002)?.name == "listener[2]")
        #expect(c.ownListener(host: "127.0.0.1", port: 3128)?.name == "[proxy] listen")
        #expect(c.ownListener(host: "127.0.0.1", port: 9901)?.name == "[admin] listen")
    }

    @Test func otherAddressesPortsAndNamesAreNotItsOwn() throws {
        let c = try load(threeListeners)
        #expect(c.ownListener(host: "127.0.0.1", port: 9003) == nil)
        #expect(c.ownListener(host: "127.0.0.2", port: 9001) == nil)    // another loopback address, another socket
        #expect(c.ownListener(host: "::1", port: 9001) == nil)
        #expect(c.ownListener(host: "127.0.0.1", port: 9002) == nil)
        #expect(c.ownListener(host: "api.mygreatbank.test", port: 9001) == nil)  // names are for the routes
        #expect(c.ownListener(host: "127.0.0.1", port: 80) == nil)
    }

    @Test func aListenerOnEveryAddressIsNamedByLoopback() {
        let any = OwnListener(name: "listener[1]", listen: HostPort(host: "0.0.0.0", port: 9001))
        #expect(any.isNamed(byHost: "127.0.0.1", port: 9001))
        #expect(any.isNamed(byHost: "localhost", port: 9001))
        #expect(any.isNamed(byHost: "0.0.0.0", port: 9001))
        #expect(!any.isNamed(byHost: "10.0.0.1", port: 9001))  // might be this machine; not decidable without asking it
        let any6 = OwnListener(name: "x", listen: HostPort(host: "::", port: 1))
        #expect(any6.isNamed(byHost: "::1", port: 1))
        #expect(!any6.isNamed(byHost: "::1", port: 2))
    }

    @Test func locationRewriteKeys() throws {
        let c = try load(threeListeners)
        #expect(c.listeners.map(\.rewriteLocation) == [true, false])
        #expect(c.proxy.rewriteHTTPSLocation == false)
        let on = try load("[proxy]\nrewrite_https_location = true\n")
        #expect(on.proxy.rewriteHTTPSLocation)
        #expect(throws: ConfigError.self) { try load("[proxy]\nrewrite_https_location = \"yes\"\n") }
        #expect(throws: ConfigError.self) {
            try load("[[listener]]\nlisten = \"127.0.0.1:9001\"\nupstream = \"https://a.test\"\nrewrite_location = 1\n")
        }
        #expect(throws: ConfigError.self) {  // only the forward listener has it
            try load("[[listener]]\nlisten = \"127.0.0.1:9001\"\nupstream = \"https://a.test\"\nrewrite_https_location = true\n")
        }
    }
}
