import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// Resolves an upstream host on the worker's evdns base and applies the SSRF guard to what it returns.
/// The answer may come inline (numeric hosts, /etc/hosts): `done` then runs before `start` returns.
final class UpstreamResolver {
    enum Answer {
        case address(SocketAddress)
        /// A getaddrinfo error code (EVUTIL_EAI_*).
        case failed(Int32)
        /// Every address the name resolved to is one the guard refuses.
        case prohibited(address: String, reason: String)
    }

    private var request: OpaquePointer?
    private var done: ((Answer) -> Void)?
    private let allowPrivate: Bool

    /// Why dialling an upstream failed before any TCP connection existed.
    enum DialFailure {
        case socket(errno: Int32)
        /// A getaddrinfo error code.
        case dns(Int32)
        case prohibited(address: String, reason: String)
    }

    /// Connects `bev` to `connect` when the route names it, else to `host`: an IP literal, or a name resolved
    /// on `dns`; non-public addresses are refused unless `allowPrivate`. Failures go to `failed`, possibly
    /// before this returns, so callers report them from the loop. Returns the resolver while a lookup is
    /// pending; cancel it before freeing `bev`.
    static func dial(_ bev: OpaquePointer, dns: OpaquePointer, host: String, port: Int, connect: HostPort?,
                     allowPrivate: Bool, failed: @escaping (DialFailure) -> Void) -> UpstreamResolver? {
        dial(dns: dns, host: host, port: port, connect: connect, allowPrivate: allowPrivate, failed: failed) { address in
            address.withSockaddr({ bufferevent_socket_connect(bev, $0, Int32($1)) }) == 0 ? 0 : mtls_errno()
        }
    }

    /// The same, with `start` starting the connect to the address chosen: it returns 0, or the errno of a
    /// connect that failed at once.
    static func dial(dns: OpaquePointer, host: String, port: Int, connect: HostPort?, allowPrivate: Bool,
                     failed: @escaping (DialFailure) -> Void,
                     start: @escaping (SocketAddress) -> Int32) -> UpstreamResolver? {
        func connectTo(_ address: SocketAddress) {
            let e = start(address)
            if e != 0 { failed(.socket(errno: e)) }
        }
        if let connect {
            guard let address = SocketAddress(connect) else {
                failed(.socket(errno: EINVAL))
                return nil
            }
            connectTo(address)
            return nil
        }
        if let ip = IPAddress(host) {
            if !allowPrivate, let reason = AddressPolicy.nonPublicReason(ip) {
                failed(.prohibited(address: ip.description, reason: reason))
            } else if let address = SocketAddress(HostPort(host: host, port: port)) {
                connectTo(address)
            } else {
                failed(.socket(errno: EINVAL))
            }
            return nil
        }
        let resolver = UpstreamResolver(allowPrivate: allowPrivate) { answer in
            switch answer {
            case .address(let address): connectTo(address)
            case .failed(let code): failed(.dns(code))
            case .prohibited(let address, let reason): failed(.prohibited(address: address, reason: reason))
            }
        }
        resolver.start(dns: dns, host: host, port: port)
        // An inline answer (numeric host, /etc/hosts) has already been handled.
        return resolver.request == nil ? nil : resolver
    }

    init(allowPrivate: Bool, done: @escaping (Answer) -> Void) {
        self.allowPrivate = allowPrivate
        self.done = done
    }

    func start(dns: OpaquePointer, host: String, port: Int) {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_protocol = Int32(IPPROTO_TCP)
        hints.ai_flags = AI_ADDRCONFIG
        // Retained until the callback runs (inline or later), which releases it.
        let retained = Unmanaged.passRetained(self).toOpaque()
        request = evdns_getaddrinfo(dns, host, String(port), &hints, resolverCallback, retained)
    }

    /// Stops waiting; `done` will not be called.
    func cancel() {
        done = nil
        if let request {
            self.request = nil
            evdns_getaddrinfo_cancel(request)
        }
    }

    fileprivate func answered(_ result: Int32, _ list: UnsafeMutablePointer<addrinfo>?) {
        request = nil
        defer { if let list { evutil_freeaddrinfo(list) } }
        guard let done else { return }
        self.done = nil
        guard result == 0, let list else {
            done(.failed(result == 0 ? EAI_NONAME : result))
            return
        }
        var refused: (String, String)?
        var node: UnsafeMutablePointer<addrinfo>? = list
        while let current = node {
            defer { node = current.pointee.ai_next }
            guard let sa = current.pointee.ai_addr else { continue }
            let described = SocketAddress.describe(sa)
            if !allowPrivate, let ip = described.ip, let reason = AddressPolicy.nonPublicReason(ip) {
                if refused == nil { refused = (ip.description, reason) }
                continue
            }
            if let address = SocketAddress(copying: sa, length: socklen_t(current.pointee.ai_addrlen)) {
                done(.address(address))
                return
            }
        }
        if let (address, reason) = refused {
            done(.prohibited(address: address, reason: reason))
        } else {
            done(.failed(EAI_NONAME))
        }
    }
}

private func resolverCallback(_ result: Int32, _ list: UnsafeMutablePointer<addrinfo>?, _ ctx: UnsafeMutableRawPointer?) {
    let resolver = Unmanaged<UpstreamResolver>.fromOpaque(ctx!).takeRetainedValue()
    resolver.answered(result, list)
}
