import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// One blocking TLS connection made for the `pins` command the way a route makes it (its context: policy, CA
/// bundle, client certificate, pins; SNI and name check for `host`), to show the certificates the server
/// presents and their pins. Nothing is sent after the handshake. Not for the data path.
public enum PeerChainProbe {
    public struct Presented: Sendable {
        public var subject: String
        public var issuer: String
        public var pin: String
    }

    public struct Outcome: Sendable {
        /// What the server sent, leaf first (empty if the handshake failed before its certificate).
        public var chain: [Presented]
        /// nil when the handshake completed and the route would accept the server.
        public var failure: String?
        public var version: String?
    }

    /// Connects to `address` (numeric) and runs the handshake with `context` for `host`. Certificates are shown
    /// even when the route would refuse them; `failure` says why it would.
    public static func run(context: ClientTLSContext, host: String, port: Int, address: IPAddress,
                           timeoutMillis: Int) -> Outcome {
        var failed = Outcome(chain: [], failure: nil, version: nil)
        let family = address.isV6 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { failed.failure = "socket: \(String(cString: strerror(errno)))"; return failed }
        defer { close(fd) }
        var tv = timeval(tv_sec: timeoutMillis / 1000, tv_usec: Int((timeoutMillis % 1000) * 1000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let connected: Int32
        if address.isV6 {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = in_port_t(UInt16(port).bigEndian)
            withUnsafeMutableBytes(of: &sa.sin6_addr) { $0.copyBytes(from: address.bytes) }
            connected = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        } else {
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = in_port_t(UInt16(port).bigEndian)
            withUnsafeMutableBytes(of: &sa.sin_addr) { $0.copyBytes(from: address.bytes) }
            connected = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        }
        guard connected == 0 else { failed.failure = "cannot connect to \(address):\(port): \(String(cString: strerror(errno)))"; return failed }
        guard let session = UpstreamTLSSession(context: context, host: host, port: port, sessionKey: "pins-probe") else {
            failed.failure = "cannot make a TLS connection for \(host)"
            return failed
        }
        defer { session.release(sendCloseNotify: true) }
        guard session.attach(socket: fd) else { failed.failure = "cannot attach TLS to the socket"; return failed }
        var outcome = Outcome(chain: [], failure: nil, version: nil)
        // A token identity's handshake pauses while a signing thread asks the token: wait for its signature
        // (within the same timeout) and go on, as the worker's loop does.
        var step = session.handshake()
        while case .waitForSignature(let signature) = step {
            var ready = pollfd(fd: signature, events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, Int32(clamping: timeoutMillis)) == 1 else { break }
            step = session.handshake()
        }
        switch step {
        case .done:
            outcome.version = session.version
        case .waitForSignature:
            outcome.failure = "the token did not sign within \(timeoutMillis) ms"
        case .wantRead, .wantWrite, .waitingForCRL:
            outcome.failure = "the server did not finish the handshake within \(timeoutMillis) ms"
        case .closed:
            outcome.failure = "the server closed the connection during the handshake"
        case .failed(let e, let errors):
            let failure = session.failure(handshakeCompleted: false, errors: errors, errno: e, closed: false)
            if let refusal = failure.trustRefusal {
                outcome.failure = "\(refusal)"
            } else if failure.verifyResult != 0 {
                outcome.failure = "certificate verification failed: \(failure.verifyMessage)"
            } else {
                outcome.failure = OpenSSLErrors.describe(errors.filter { !$0.isPseudo })
            }
        }
        outcome.chain = session.presentedChain.map { Presented(subject: $0.subject, issuer: $0.issuer, pin: $0.spkiPin) }
        return outcome
    }
}
