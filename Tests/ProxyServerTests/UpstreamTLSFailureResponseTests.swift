import Testing
import CEventTLS
import TLS
import HTTP1
@testable import ProxyServer

private func failure(phase: UpstreamTLSFailure.Phase = .handshake, identity: String? = "us", verify: Int = 0,
                     verifyMessage: String = "ok", errors: [OpenSSLErrorEntry] = [], errno: Int32 = 0) -> UpstreamTLSFailure {
    UpstreamTLSFailure(phase: phase, host: "api.mygreatbank.test", port: 443, identity: identity,
                       certificateSubject: identity == nil ? nil : "CN=fusion-us", verifyResult: verify,
                       verifyMessage: verifyMessage, errors: errors, socketErrno: errno, closed: errno == 0)
}

private func alert(_ n: Int32, _ text: String) -> OpenSSLErrorEntry {
    OpenSSLErrorEntry(library: ERR_LIB_SSL, reason: 1000 + n, reasonText: text)
}

@Suite struct UpstreamTLSFailureTests {
    @Test func ourVerificationFailureBlamesTheServerCertificate() {
        let r = failure(verify: 62, verifyMessage: "hostname mismatch").response
        #expect(r.status == 502)
        #expect(r.errorType == .tlsCertificateError)
        #expect(r.details.contains("hostname mismatch"))
        #expect(r.advice.contains("ca_file"))
    }

    @Test func tls13CertificateRequiredAfterTheHandshake() {
        let r = failure(phase: .afterHandshake, errors: [alert(116, "tlsv13 alert certificate required")]).response
        #expect(r.errorType == .tlsAlertReceived)
        #expect(r.details.contains("certificate_required (116)"))
        #expect(r.details.contains("identity us"))
        #expect(r.advice.contains("allowlist"))
        #expect(r.advice.contains("mtls-proxy certs us --pem"))
    }

    @Test func unknownCAOnATLSRouteSuggestsAnIdentity() {
        let r = failure(identity: nil, errors: [alert(116, "tlsv13 alert certificate required")]).response
        #expect(r.details.contains("no client certificate"))
        #expect(r.advice.contains("Give the route an identity"))
    }

    @Test func protocolVersionAlert() {
        let r = failure(errors: [alert(70, "tlsv1 alert protocol version")]).response
        #expect(r.details.contains("protocol_version"))
        #expect(r.advice.contains("tls_min_version"))
    }

    @Test func revokedNamesSubjectSerialAndRevoked() {
        var f = failure(errors: [])
        f.verifyResult = 50
        f.trustRefusal = .revoked(subject: "CN=api.example.com", serial: "1A2B")
        let r = f.response
        #expect(r.status == 502 && r.errorType == .tlsCertificateError)
        #expect(r.details.contains("CN=api.example.com") && r.details.contains("1A2B") && r.details.contains("revoked"))
        #expect(r.details.contains(f.upstream))
    }

    @Test func aRevokedIntermediateIsNamedAsTheChainsCACertificate() {
        var f = failure(errors: [])
        f.trustRefusal = .revoked(subject: "CN=Issuing CA 2", serial: "1000", depth: 1)
        let r = f.response
        #expect(r.status == 502 && r.errorType == .tlsCertificateError)
        #expect(r.details.contains("revoked CA certificate: CN=Issuing CA 2, serial 1000"))
        #expect(r.details.contains("the intermediate that issued the server's certificate"))
        f.trustRefusal = .crlUnavailable(subject: "CN=Issuing CA 2", serial: "1000", reason: "unable to get certificate CRL", depth: 2)
        #expect(f.response.details.contains("CA certificate CN=Issuing CA 2, serial 1000 (a CA certificate 2 levels above the server's)"))
        #expect(f.response.advice.contains("revocation_scope = \"leaf\""))
    }

    @Test func crlUnavailableIsNotCalledRevoked() {
        var f = failure(errors: [])
        f.trustRefusal = .crlUnavailable(subject: "CN=a", serial: "01", reason: "CRL has expired")
        let r = f.response
        #expect(r.details.hasPrefix("CRL unavailable") && r.details.contains("CRL has expired"))
        #expect(!r.details.contains("revoked"))
    }

    /// The advice names what the route gets its CRLs from: crl_files to update, the distribution points of
    /// crl_fetch, or both; never crl_files for a route that only fetches.
    @Test func crlUnavailableAdviceNamesTheRoutesCRLSource() {
        var f = failure(errors: [])
        for depth in [0, 1] {
            f.trustRefusal = .crlUnavailable(subject: "CN=a", serial: "01", reason: "unable to get certificate CRL", depth: depth)
            f.crlSources = .init(files: false, fetched: true)
            #expect(!f.response.advice.contains("crl_files") && f.response.advice.contains("distribution point"), "\(f.response.advice)")
            f.crlSources = .init(files: true, fetched: false)
            #expect(f.response.advice.contains("crl_files") && !f.response.advice.contains("crl_fetch"), "\(f.response.advice)")
            f.crlSources = .init(files: true, fetched: true)
            #expect(f.response.advice.contains("crl_files") && f.response.advice.contains("crl_fetch"), "\(f.response.advice)")
        }
    }

    @Test func pinMismatchNamesThePresentedPin() {
        var f = failure(errors: [])
        f.trustRefusal = .pinMismatch(presented: "n4rE2gbJ3Ka/U7FJAudpqYaD4h2w8WrjHkDvPUuMQ9Q=", subject: "CN=a")
        let r = f.response
        #expect(r.details.contains("pin-sha256=\"n4rE2gbJ3Ka/U7FJAudpqYaD4h2w8WrjHkDvPUuMQ9Q=\""))
        #expect(r.advice.contains("mtls-proxy pins"))
    }

    @Test func pseudoErrorsAreIgnored() {
        let r = failure(phase: .afterHandshake, errors: [OpenSSLErrorEntry(library: 0, reason: 1, reasonText: "reason(1)")], errno: 104).response
        #expect(r.errorType == .connectionTerminated)
        #expect(r.details.contains("ECONNRESET"))
        #expect(r.details.contains("right after the TLS handshake"))
        #expect(r.advice.contains("rejected the client certificate"))
    }

    @Test func plainHTTPOnATLSPort() {
        let r = failure(errors: [OpenSSLErrorEntry(library: ERR_LIB_SSL, reason: 267, reasonText: "wrong version number")]).response
        #expect(r.errorType == .tlsProtocolError)
        #expect(r.advice.contains("does not speak TLS"))
    }

    @Test func alertNumbersComeFromTheReasonCode() {
        #expect(alert(48, "x").alert == 48)
        #expect(OpenSSLErrorEntry(library: ERR_LIB_SSL, reason: 134, reasonText: "certificate verify failed").alert == nil)
        #expect(OpenSSLErrorEntry(library: ERR_LIB_X509, reason: 1048, reasonText: "x").alert == nil)
    }
}
