import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// A sockaddr for a numeric address, for bind and connect.
struct SocketAddress {
    var storage = sockaddr_storage()
    var length: socklen_t = 0

    init?(_ hp: HostPort) {
        if hp.isIPv6 {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = in_port_t(UInt16(hp.port).bigEndian)
            guard inet_pton(AF_INET6, hp.host, &sin6.sin6_addr) == 1 else { return nil }
            withUnsafeMutableBytes(of: &storage) { dst in
                withUnsafeBytes(of: sin6) { dst.copyMemory(from: $0) }
            }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        } else {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = in_port_t(UInt16(hp.port).bigEndian)
            guard inet_pton(AF_INET, hp.host, &sin.sin_addr) == 1 else { return nil }
            withUnsafeMutableBytes(of: &storage) { dst in
                withUnsafeBytes(of: sin) { dst.copyMemory(from: $0) }
            }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
        }
    }

    init?(copying sa: UnsafePointer<sockaddr>, length: socklen_t) {
        guard length <= socklen_t(MemoryLayout<sockaddr_storage>.size) else { return nil }
        withUnsafeMutableBytes(of: &storage) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: sa, count: Int(length)))
        }
        self.length = length
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }

    /// The address and port of a sockaddr, e.g. from accept or getsockname.
    static func describe(_ sa: UnsafePointer<sockaddr>) -> (ip: IPAddress?, text: String, port: Int) {
        if Int32(sa.pointee.sa_family) == AF_INET6 {
            return sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                let bytes = withUnsafeBytes(of: p.pointee.sin6_addr) { Array($0) }
                let ip = IPAddress(bytes: bytes)
                let port = Int(UInt16(bigEndian: p.pointee.sin6_port))
                return (ip, "[\(ip?.description ?? "?")]:\(port)", port)
            }
        }
        return sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in
            let bytes = withUnsafeBytes(of: p.pointee.sin_addr) { Array($0) }
            let ip = IPAddress(bytes: bytes)
            let port = Int(UInt16(bigEndian: p.pointee.sin_port))
            return (ip, "\(ip?.description ?? "?"):\(port)", port)
        }
    }

    /// Binds `address` once without SO_REUSEPORT (SO_REUSEADDR only, so connections in TIME_WAIT do not
    /// count) and lets it go. The workers of one process share an address through SO_REUSEPORT, which would
    /// also let another process join silently; this probe fails when any other socket holds the address.
    /// Returns the errno of the failed bind, nil when the address is free.
    static func probeExclusive(_ address: HostPort) -> Int32? {
        guard let sockaddr = SocketAddress(address) else { return EINVAL }
        let fd = socket(address.isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return mtls_errno() }
        defer { close(fd) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = sockaddr.withSockaddr { Glibc.bind(fd, $0, $1) }
        return rc == 0 ? nil : mtls_errno()
    }

    /// The local port a bound socket got (for port 0).
    static func localPort(of fd: Int32) -> Int {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard ok == 0 else { return 0 }
        return withUnsafePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { describe($0).port }
        }
    }
}
