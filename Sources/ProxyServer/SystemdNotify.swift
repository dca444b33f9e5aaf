import CEventTLS
#if canImport(Glibc)
import Glibc
#endif

/// systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram of `KEY=value` lines to the
/// unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). Does nothing when the
/// variable is unset, so the same binary runs under `Type=notify`, `Type=simple`, a container or a shell.
public final class SystemdNotifier: @unchecked Sendable {
    private let address: sockaddr_un?
    private let length: socklen_t

    /// Reads `$NOTIFY_SOCKET` (or `socketPath` when given).
    public init(socketPath: String? = SystemdNotifier.environmentSocket()) {
        guard let path = socketPath, let (address, length) = Self.address(path) else {
            self.address = nil
            self.length = 0
            return
        }
        self.address = address
        self.length = length
    }

    public static func environmentSocket() -> String? {
        getenv("NOTIFY_SOCKET").map { String(cString: $0) }
    }

    public var isEnabled: Bool { address != nil }

    /// The socket address for a `$NOTIFY_SOCKET` value, or nil if it is empty, too long or not a unix socket.
    static func address(_ path: String) -> (sockaddr_un, socklen_t)? {
        var bytes = Array(path.utf8)
        guard let first = bytes.first, first == UInt8(ascii: "/") || first == UInt8(ascii: "@") else { return nil }
        let abstract = first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        var address = sockaddr_un()
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        // A path needs its terminating NUL; an abstract name is counted by length.
        guard bytes.count < capacity || (abstract && bytes.count <= capacity) else { return nil }
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let offset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
        let length = socklen_t(offset + bytes.count + (abstract ? 0 : 1))
        return (address, length)
    }

    /// The message for a state: the fields in order, one `KEY=value` a line. A status never spans lines.
    static func message(_ fields: [(String, String)]) -> String {
        fields.map { "\($0.0)=\($0.1.split(whereSeparator: \.isNewline).joined(separator: " "))" }.joined(separator: "\n") + "\n"
    }

    /// Sends one datagram, never waiting; failures are ignored (systemd may have gone away, the protocol is best
    /// effort).
    @discardableResult
    public func send(_ fields: [(String, String)]) -> Bool {
        guard var address else { return false }
        // Non-blocking: a receiver that does not read (a hung supervisor, a wrong NOTIFY_SOCKET) fills its queue,
        // and then the notice is dropped instead of stopping the main loop.
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let bytes = Array(Self.message(fields).utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT), sa, length) }
            }
        }
        return sent == bytes.count
    }

    public func ready(status: String) { send([("READY", "1"), ("STATUS", status)]) }

    /// Before a reload: systemd (253+) wants the monotonic time in microseconds with it.
    public func reloading() {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        send([("RELOADING", "1"), ("MONOTONIC_USEC", String(Int(ts.tv_sec) * 1_000_000 + Int(ts.tv_nsec) / 1000)),
              ("STATUS", "reloading")])
    }

    public func stopping(status: String) { send([("STOPPING", "1"), ("STATUS", status)]) }
}
