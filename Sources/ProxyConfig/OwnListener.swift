/// One of the proxy's own listening addresses, as a forward request may name it by mistake: a client with
/// `HTTP_PROXY` set and a base URL of the sidecar listener (`http://127.0.0.1:9001/`) sends that request to the
/// proxy instead of connecting to the listener, unless the address is in `NO_PROXY`.
public struct OwnListener: Sendable, Equatable {
    /// How the config names it: `[proxy] listen`, `listener[N]`, `[admin] listen`.
    public var name: String
    public var listen: HostPort
    /// For a sidecar listener, the upstream it sends every request to.
    public var upstreamURL: String?

    public init(name: String, listen: HostPort, upstreamURL: String? = nil) {
        self.name = name
        self.listen = listen
        self.upstreamURL = upstreamURL
    }

    /// Whether a request for `host:port` (host lower-cased, as in a URL) reaches this listener: the same address,
    /// or a loopback name or address (`localhost`, 127.0.0.0/8, ::1) for a loopback listener or one on every
    /// address (0.0.0.0, ::). Names other than `localhost` are not resolved: they are for the routes to decide.
    public func isNamed(byHost host: String, port: Int) -> Bool {
        guard port == listen.port, let listenAddress = IPAddress(listen.host) else { return false }
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if let address = IPAddress(bare) {
            if address == listenAddress { return true }
            return Self.isUnspecified(listenAddress) && Self.isLoopback(address)
        }
        let name = bare.hasSuffix(".") ? String(bare.dropLast()) : bare
        guard name == "localhost" || name.hasSuffix(".localhost") else { return false }
        return Self.isLoopback(listenAddress) || Self.isUnspecified(listenAddress)
    }

    static func isLoopback(_ a: IPAddress) -> Bool {
        a.isV6 ? a.bytes == [UInt8](repeating: 0, count: 15) + [1] : a.bytes[0] == 127
    }

    static func isUnspecified(_ a: IPAddress) -> Bool {
        a.bytes.allSatisfy { $0 == 0 }
    }
}

extension ProxyConfiguration {
    /// Every address the proxy listens on: the forward listener, the sidecar listeners, the admin endpoint.
    public var ownListeners: [OwnListener] {
        var all = [OwnListener(name: "[proxy] listen", listen: proxy.listen)]
        all += listeners.map { OwnListener(name: $0.configKey, listen: $0.listen, upstreamURL: $0.upstreamURL) }
        if let admin { all.append(OwnListener(name: "[admin] listen", listen: admin.listen)) }
        return all
    }

    /// The listener of this proxy that a forward request for `host:port` names, if any (see `OwnListener`).
    /// `port` is the port the client meant: the URL's, or 80 for an `http://` URL without one.
    public func ownListener(host: String, port: Int) -> OwnListener? {
        // Checked on every forward request: the port comparison decides nearly always, without allocating.
        guard port == proxy.listen.port || admin?.listen.port == port || listeners.contains(where: { $0.listen.port == port })
        else { return nil }
        return ownListeners.first { $0.isNamed(byHost: host, port: port) }
    }
}
