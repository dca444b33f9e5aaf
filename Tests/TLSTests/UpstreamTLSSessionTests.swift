import CEventTLS
#if canImport(Glibc)
import Glibc
#endif
import Testing
import ProxyConfig
@testable import TLS

/// The SSL of an upstream connection finds its `UpstreamTLSSession` (for the handshake-start and new-session
/// callbacks) through an ex_data index of its own, and loses it when the session lets go of the SSL.
@Suite struct UpstreamTLSSessionTests {
    @Test func theExDataIndexIsAllocatedNotTheApplicationSlot() {
        #expect(UpstreamTLSSession.exDataIndex > 0)
    }

    @Test func aHostWithANulGivesNoSession() throws {
        let ctx = try UncheckedCallsTests.context()
        #expect(UpstreamTLSSession(context: ctx, host: "api.mygreatbank.test\u{0}.evil.example", port: 443, sessionKey: "k") == nil)
    }

    @Test func theSSLPointsAtItsSessionUntilHandedOver() throws {
        let ctx = try UncheckedCallsTests.context()
        let tls = try #require(UpstreamTLSSession(context: ctx, host: "api.mygreatbank.test", port: 443, sessionKey: "k"))
        #expect(tls.serverBytesRead == 0)
        #expect(!tls.sessionReused)
        #expect(tls.handshakeStartedMicros == 0)
        let base = try #require(event_base_new())
        defer { event_base_free(base) }
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[1]) }
        let pending = try #require(evbuffer_new())
        defer { evbuffer_free(pending) }
        let (bev, session) = try #require(tls.handOver(base: base, fd: fds[0], pending: pending))
        #expect(SSL_get_ex_data(session.ssl, UpstreamTLSSession.exDataIndex) == nil)
        #expect(tls.handOver(base: base, fd: fds[0], pending: pending) == nil)
        #expect(evbuffer_get_length(pending) == 0)
        // The bufferevent owns the SSL and the socket now: freeing it frees both.
        bufferevent_free(bev)
        // Reads and writes on a session that let go of its SSL fail plainly, without touching OpenSSL.
        var byte: UInt8 = 0
        if case .failed(let e, _) = tls.read(into: &byte, count: 1) { #expect(e == EBADF) } else { Issue.record("read succeeded") }
        if case .failed(let e, _) = tls.write(&byte, count: 1) { #expect(e == EBADF) } else { Issue.record("write succeeded") }
    }

    @Test func releaseFreesTheSSLOnce() throws {
        let ctx = try UncheckedCallsTests.context()
        let tls = try #require(UpstreamTLSSession(context: ctx, host: "api.mygreatbank.test", port: 443, sessionKey: "k"))
        tls.release(sendCloseNotify: false)
        tls.release(sendCloseNotify: true)  // nothing left to free
        #expect(!tls.hasBufferedInput)
        #expect(!tls.attach(socket: 0))
    }

    /// A handshake over a socket whose peer hung up says the server closed, not that it is still waiting.
    @Test func aHandshakeWithAPeerThatClosedSaysClosed() throws {
        let ctx = try UncheckedCallsTests.context()
        let tls = try #require(UpstreamTLSSession(context: ctx, host: "api.mygreatbank.test", port: 443, sessionKey: "k"))
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]) }
        close(fds[1])
        signal(SIGPIPE, SIG_IGN)  // as the proxy runs: a write to a closed peer is EPIPE, not a signal
        #expect(tls.attach(socket: fds[0]))
        switch tls.handshake() {
        case .closed, .failed: break
        default: Issue.record("a handshake with a closed peer did not fail")
        }
        tls.release(sendCloseNotify: false)
    }

    @Test func aFailureNamesTheUpstreamAndThePhase() throws {
        let ctx = try UncheckedCallsTests.context()
        let tls = try #require(UpstreamTLSSession(context: ctx, host: "api.mygreatbank.test", port: 8443, sessionKey: "k"))
        let failure = tls.failure(handshakeCompleted: false, errors: [], errno: 0, closed: true)
        #expect(failure.upstream == "api.mygreatbank.test:8443")
        #expect(failure.phase == .handshake)
        #expect(failure.presented == "no client certificate (a tls route)")
    }
}
