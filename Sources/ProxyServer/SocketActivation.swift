import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// Listening sockets handed over by a supervisor, the systemd way (`LISTEN_PID`, `LISTEN_FDS`, descriptors
/// from 3 on). A socket the process inherits is used as it is, never bound again: the supervisor keeps it open,
/// so a new proxy can start on it while the old one drains, and no connection is refused in between (see
/// docs/deployment.md, "Upgrading without downtime"). Addresses the supervisor does not hand over are bound as usual.
struct SocketActivation {
    /// Inherited listening descriptors with the address each is bound to.
    private(set) var sockets: [(fd: Int32, address: String, ip: IPAddress?, port: Int)] = []

    /// The descriptors `LISTEN_PID`/`LISTEN_FDS` hand to `pid`: none when the variables are absent, malformed,
    /// or meant for another process. Pure.
    static func descriptors(listenPID: String?, listenFDs: String?, pid: Int32) -> [Int32] {
        guard let listenPID, let owner = Int32(listenPID), owner == pid,
              let listenFDs, let count = Int32(listenFDs), count > 0, count < 1024 else { return [] }
        return Array(3..<(3 + count))
    }

    /// Reads the environment once, and unsets it so nothing this process starts takes the sockets for its own.
    static func fromEnvironment() -> SocketActivation {
        let fds = descriptors(listenPID: getenv("LISTEN_PID").map { String(cString: $0) },
                              listenFDs: getenv("LISTEN_FDS").map { String(cString: $0) }, pid: getpid())
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
        var activation = SocketActivation()
        for fd in fds {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let ok = withUnsafeMutablePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            guard ok == 0 else { continue }
            let described = withUnsafePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddress.describe($0) }
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            activation.sockets.append((fd, described.text, described.ip, described.port))
        }
        return activation
    }

    /// The inherited socket bound to `address`, if any.
    func socket(for address: HostPort) -> Int32? {
        guard let ip = IPAddress(address.host) else { return nil }
        return sockets.first { $0.ip == ip && $0.port == address.port }?.fd
    }

    var isEmpty: Bool { sockets.isEmpty }
}
