import ArgumentParser
import Foundation
import ProxyConfig

struct Health: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask a running proxy's admin endpoint whether it is healthy (for container health checks).",
        discussion: "Exits 0 when GET /healthz (or /readyz with --ready) answers 200, else 1.")

    @OptionGroup var options: ConfigOption

    @Option(help: "The admin address (default: [admin] listen from the config).")
    var admin: String?

    @Flag(help: "Ask /readyz instead of /healthz.")
    var ready = false

    func run() throws {
        let address: HostPort
        let source: String
        if let admin {
            source = "--admin"
            guard let parsed = HostPort.parse(admin) else {
                printError("mtls-proxy: --admin expects an address and port such as 127.0.0.1:9901, got \"\(admin)\"")
                throw ExitCode(2)
            }
            address = parsed
        } else {
            // In a container, the proxy is PID 1: its own --config wins over $MTLS_PROXY_CONFIG and the defaults.
            let running = options.config == nil ? RunningProcessConfig.ofProcess(1) : nil
            let config = try running.map { try ConfigLoader.load(file: $0, environment: options.environment) } ?? options.loadConfiguration()
            source = running.map { "[admin] listen in \($0), the config of process 1" } ?? "[admin] listen in \(config.file)"
            guard let configured = config.admin?.listen else {
                printError("mtls-proxy: no [admin] listen in the config; pass --admin ADDRESS")
                throw ExitCode(2)
            }
            address = configured
        }
        let path = ready ? "/readyz" : "/healthz"
        guard let (status, body) = Self.get(address, path: path) else {
            printError("mtls-proxy: no answer from http://\(address)\(path) (\(source)): is the proxy running, with this config?")
            throw ExitCode(1)
        }
        print(body.trimmingCharacters(in: .whitespacesAndNewlines))
        if status != 200 { throw ExitCode(1) }
    }

    /// A blocking GET with a 3 s deadline over a plain socket.
    static func get(_ address: HostPort, path: String) -> (Int, String)? {
        let family = address.isIPv6 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var storage = sockaddr_storage()
        var length: socklen_t
        if address.isIPv6 {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = in_port_t(UInt16(address.port).bigEndian)
            inet_pton(AF_INET6, address.host, &sin6.sin6_addr)
            withUnsafeMutableBytes(of: &storage) { dst in withUnsafeBytes(of: sin6) { dst.copyMemory(from: $0) } }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        } else {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = in_port_t(UInt16(address.port).bigEndian)
            inet_pton(AF_INET, address.host, &sin.sin_addr)
            withUnsafeMutableBytes(of: &storage) { dst in withUnsafeBytes(of: sin) { dst.copyMemory(from: $0) } }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
        }
        let connected = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) }
        }
        guard connected == 0 else { return nil }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: \(address)\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else { return nil }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while response.count < 65536 {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            response += buffer[0..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        let parts = text.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else { return nil }
        let body = text.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
        return (status, body)
    }
}
