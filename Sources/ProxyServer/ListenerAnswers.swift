import HTTP1
import ProxyConfig

/// What a listener adds to the answers it forwards: the `Location` rewrite that keeps redirects on the proxy.
extension ListenerKind {
    /// The rewrite for a response to `request` on this listener, or nil when none applies:
    /// - a sidecar listener (unless `rewrite_location = false`): URLs on its upstream become URLs on the listener,
    ///   under the authority the client used to reach it (its `Host`, when it names the listener's port), else the
    ///   listen address;
    /// - the forward listener with `[proxy] rewrite_https_location = true`: `https://HOST/...` becomes
    ///   `http://HOST/...` where HOST has an `mtls` route;
    /// - inside an intercepted tunnel the client already speaks https through the proxy: nothing to rewrite;
    ///   inside a plain tunnel (CONNECT to port 80) the client follows a redirect with a tunnel of its own.
    func locationRewrite(for request: RequestHead, runtime: ProxyRuntime) -> LocationRewrite? {
        switch self {
        case .fixed(let listener):
            guard listener.rewriteLocation else { return nil }
            let authority = LocationRewrite.listenerAuthority(host: request.headers.first("Host"), listenAuthority: listener.listen.description,
                                                             listenPort: listener.listen.port,
                                                             listensOnEveryAddress: listener.listen.host == "0.0.0.0" || listener.listen.host == "::")
            return LocationRewrite(.sidecar(upstreamHost: listener.host, upstreamPort: listener.port, listenerAuthority: authority))
        case .forward:
            guard runtime.config.proxy.rewriteHTTPSLocation else { return nil }
            let router = runtime.router
            return LocationRewrite(.httpsToHTTP(isProxied: { host, port, path in
                if case .mtls = router.match(host: host, port: port, path: path).action { return true }
                return false
            }))
        case .intercepted, .plainTunnel:
            return nil
        }
    }
}

extension Refusals {
    /// A forward request for one of the proxy's own listeners: the client sent through the proxy what it should
    /// have sent to the listener directly, nearly always because the address is missing from `NO_PROXY`.
    static func ownListener(_ own: OwnListener, host: String, port: Int) -> ProxyErrorResponse {
        let what = own.upstreamURL.map { "\(own.name), the sidecar listener for \($0)" } ?? own.name
        return ProxyErrorResponse(
            status: 403, errorType: .httpRequestDenied,
            details: "\(host):\(port) is this proxy's own address (\(what)); the request came through the proxy instead of straight to it",
            advice: "Connect to \(own.listen) directly: add it to NO_PROXY (and no_proxy), for example NO_PROXY=127.0.0.1,localhost,::1, so the client does not send it through HTTP_PROXY.")
    }
}
