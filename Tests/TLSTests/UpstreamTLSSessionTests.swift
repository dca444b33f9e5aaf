import CEventTLS
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
        let session = try #require(tls.handOver())
        #expect(SSL_get_ex_data(session.ssl, UpstreamTLSSession.exDataIndex) == nil)
        #expect(tls.handOver() == nil)
        session.discard()
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
