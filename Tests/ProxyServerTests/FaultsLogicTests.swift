import Glibc
import Testing
import ProxyConfig
@testable import ProxyServer

/// The pure parts of issue 15's fixes: the per-address failure window, what a reload cannot change, and the
/// one-line bind error.
@Suite struct FaultsLogicTests {
    @Test func failuresPastTheLimitAreRefusedUntilTheWindowPasses() {
        var w = FailureWindow(limit: 3, windowMillis: 10_000)
        for t in 0..<3 {
            #expect(w.admit("10.0.0.1", now: t) == nil)
            w.finished("10.0.0.1", ok: false, now: t)
        }
        #expect(w.admit("10.0.0.1", now: 100) == 10)
        #expect(w.admit("10.0.0.2", now: 100) == nil, "another address is not affected")
        #expect(w.admit("10.0.0.1", now: 10_001) == nil, "the oldest failure has left the window")
    }

    @Test func checksInProgressCountTowardsTheLimit() {
        var w = FailureWindow(limit: 2, windowMillis: 10_000)
        #expect(w.admit("a", now: 0) == nil)
        #expect(w.admit("a", now: 0) == nil)
        #expect(w.admit("a", now: 0) != nil)
        w.finished("a", ok: true, now: 1)
        #expect(w.admit("a", now: 1) == nil)
    }

    @Test func successesDoNotCount() {
        var w = FailureWindow(limit: 1, windowMillis: 10_000)
        for t in 0..<5 {
            #expect(w.admit("a", now: t) == nil)
            w.finished("a", ok: true, now: t)
        }
    }

    @Test func trackedAddressesStayBounded() {
        var w = FailureWindow(limit: 5, windowMillis: 1_000_000, maxAddresses: 100)
        for i in 0..<1000 {
            _ = w.admit("a\(i)", now: i)
            w.finished("a\(i)", ok: false, now: i)
        }
        #expect(w.trackedAddresses <= 100)
    }

    @Test func clientAddressOfAPeer() {
        #expect(ProxyAuthenticator.clientAddress(peer: "127.0.0.2:5000") == "127.0.0.2")
        #expect(ProxyAuthenticator.clientAddress(peer: "[::1]:5000") == "::1")
    }

    @Test func reloadNamesWhatNeedsARestart() throws {
        func config(_ text: String) throws -> ProxyConfiguration {
            try ConfigLoader.parse(text, file: "t.conf", baseDirectory: "/tmp")
        }
        let old = try config("[proxy]\nlisten = \"127.0.0.1:3128\"\nworkers = 2\n")
        let new = try config("[proxy]\nlisten = \"127.0.0.1:3129\"\nworkers = 2\n[log]\nlevel = \"debug\"\n[upstream]\nnameservers = [\"127.0.0.1:53\"]\n")
        #expect(ReloadScope.settingsNeedingRestart(old: old, new: new) == ["[proxy] listen", "[log] level"])
        #expect(ReloadScope.settingsNeedingRestart(old: old, new: old).isEmpty)
    }

    @Test func bindErrorIsOneLineWithTheAddressAndTheCause() {
        let error = ServerError.bind("127.0.0.1:9901", errno: EADDRINUSE, role: "[admin] listen")
        #expect(error.description == "127.0.0.1:9901: address already in use ([admin] listen)")
    }

    @Test func socketActivationHandsDescriptorsOnlyToItsProcess() {
        #expect(SocketActivation.descriptors(listenPID: "42", listenFDs: "2", pid: 42) == [3, 4])
        #expect(SocketActivation.descriptors(listenPID: "41", listenFDs: "2", pid: 42).isEmpty)
        #expect(SocketActivation.descriptors(listenPID: nil, listenFDs: "2", pid: 42).isEmpty)
        #expect(SocketActivation.descriptors(listenPID: "42", listenFDs: "x", pid: 42).isEmpty)
        #expect(SocketActivation.descriptors(listenPID: "42", listenFDs: "0", pid: 42).isEmpty)
    }
}

/// The key the failure limit counts by. One IPv6 host usually holds a whole /64 (SLAAC, privacy addresses, a
/// delegated prefix): counted per address, it could send unlimited wrong passwords from fresh addresses and
/// push every other address out of the window's table.
@Suite struct FailureLimitKeyTests {
    @Test func ipv6AddressesOfOneSlash64ShareAKey() {
        let a = ProxyAuthenticator.clientAddress(peer: "[2001:db8:1:2::1]:40000")
        let b = ProxyAuthenticator.clientAddress(peer: "[2001:db8:1:2:ffff:eeee:dddd:cccc]:40001")
        let other = ProxyAuthenticator.clientAddress(peer: "[2001:db8:1:3::1]:40000")
        #expect(a == b)
        #expect(a != other)
    }

    @Test func ipv4AndIPv4MappedAreOneAddressEach() {
        #expect(ProxyAuthenticator.clientAddress(peer: "127.0.0.2:5") == "127.0.0.2")
        #expect(ProxyAuthenticator.clientAddress(peer: "[::ffff:127.0.0.2]:5") == "127.0.0.2")
        #expect(ProxyAuthenticator.clientAddress(peer: "127.0.0.3:5") != "127.0.0.2")
        #expect(ProxyAuthenticator.clientAddress(peer: "[::1]:5") == ProxyAuthenticator.clientAddress(peer: "[::1]:6"))
    }
}
