import CEventTLS
import HTTP1
import TLS

/// A CONNECT answered 200 whose first bytes have not yet said how it is served (`TunnelSetup.Inside`): TLS to
/// intercept, or plain HTTP requests. It holds what interception needs, made before the 200 so that a failure is
/// still answered in HTTP. A class: the connection's machine holds it as its state's payload
/// (`.awaitingTunnelBytes`), where a reference keeps an idle connection's state small.
final class OpenedTunnel {
    let host: String
    let port: Int
    let inside: TunnelSetup.Inside
    /// The context with the leaf minted for `host`, when TLS inside is to be intercepted.
    private(set) var interception: InterceptionContext?

    init(host: String, port: Int, inside: TunnelSetup.Inside) {
        self.host = host
        self.port = port
        self.inside = inside
    }

    /// Mints (or takes from the worker's cache) the leaf for `host`; the answer to give when that fails.
    func prepareInterception(worker: Worker) -> ProxyErrorResponse? {
        do {
            guard let context = try worker.interceptionContext(for: host) else {
                // The local CA went away (a reload) since the decision: answer as if interception were off.
                return ProxyErrorResponse(status: 502, errorType: .proxyInternalError,
                                          details: "interception of \(host) is not available: no local CA is loaded")
            }
            interception = context
            return nil
        } catch {
            return ProxyErrorResponse(status: 502, errorType: .proxyInternalError, details: "cannot mint a certificate for \(host): \(error)")
        }
    }

    /// Puts a TLS filter with a session of the minted leaf over the client's socket; false when it cannot.
    func startTLS(on client: inout Endpoint, base: OpaquePointer) -> Bool {
        guard let session = interception?.makeSession() else { return false }
        guard client.makeBufferevent(base: base) else {
            session.discard()
            return false
        }
        let options = Int32(BEV_OPT_CLOSE_ON_FREE.rawValue | BEV_OPT_DEFER_CALLBACKS.rawValue)
        guard let filter = session.makeServerFilter(base: base, over: client.bev, options: options) else {
            session.discard()
            return false
        }
        client.wrap(filter: filter, tls: session)
        return true
    }

    /// What OpenSSL said when TLS with the client failed on an intercepted tunnel's filter `bev`; nil when it
    /// said nothing but pseudo-errors (the client just went away).
    static func clientTLSFailure(_ bev: OpaquePointer) -> String? {
        let errors = OpenSSLErrors.drain(bufferevent: bev, threadQueueToo: false)
        return errors.contains(where: { !$0.isPseudo }) ? OpenSSLErrors.describe(errors) : nil
    }
}
