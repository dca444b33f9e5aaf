import Foundation
import Logging
import Testing
import ProxyConfig
@testable import ProxyServer

/// The event loop with real sockets, for the answers the proxy gives without an upstream: denials, malformed
/// requests, CONNECT, keep-alive. Upstream TLS paths are covered by the end-to-end suite with real servers.
@Suite(.serialized) struct ListenerTests {
    static func withServer(_ body: (Int) throws -> Void) throws {
        ProxyServer.prepareProcess()
        let config = try ConfigLoader.parse("""
            [proxy]
            listen = "127.0.0.1:0"
            workers = 2
            max_header_bytes = 2048
            [[route]]
            name = "blocked"
            host = "blocked.test"
            action = "deny"
            """, file: "test.conf", baseDirectory: "/tmp")
        try withRunningServer(config, body)
    }

    /// Sends bytes, then reads until the proxy closes or `until` appears, with a deadline.
    static func exchange(port: Int, _ request: String, until marker: String? = nil) throws -> (response: String, closed: Bool) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(ok == 0)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let bytes = Array(request.utf8)
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var closed = false
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n == 0 { closed = true; break }
            if n < 0 { break }  // timeout: still open
            received += buffer[0..<n]
            if let marker, String(decoding: received, as: UTF8.self).components(separatedBy: marker).count > 2 { break }
        }
        return (String(decoding: received, as: UTF8.self), closed)
    }

    @Test func deniedHostGets403WithProxyStatusAndKeepAlive() throws {
        try Self.withServer { port in
            let request = "GET http://blocked.test/secret?token=1 HTTP/1.1\r\nHost: blocked.test\r\n\r\n"
            let r = try Self.exchange(port: port, request + request, until: "HTTP/1.1 403")
            #expect(r.response.hasPrefix("HTTP/1.1 403 Forbidden\r\n"))
            #expect(r.response.contains("Proxy-Status: mtls-proxy; error=http_request_denied; details=\"denied by blocked\"\r\n"))
            // Both pipelined requests were answered on the same connection.
            #expect(r.response.components(separatedBy: "HTTP/1.1 403 Forbidden").count == 3)
            #expect(!r.closed)
        }
    }

    @Test func unmatchedHostIsDeniedByDefault() throws {
        try Self.withServer { port in
            let r = try Self.exchange(port: port, "GET http://elsewhere.test/ HTTP/1.1\r\nHost: elsewhere.test\r\nConnection: close\r\n\r\n")
            #expect(r.response.hasPrefix("HTTP/1.1 403 Forbidden\r\n"))
            #expect(r.response.contains("no route matches elsewhere.test:443"))
            #expect(r.closed)
        }
    }

    @Test(arguments: [
        ("POST http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400 Bad Request", "both Content-Length and Transfer-Encoding"),
        ("GET http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\n folded\r\n\r\n", "400 Bad Request", "obsolete line folding"),
        ("GET /relative HTTP/1.1\r\nHost: blocked.test\r\n\r\n", "400 Bad Request", "origin-form"),
        ("GET http://blocked.test/ HTTP/1.1\r\n\r\n", "400 Bad Request", "without a Host header"),
        ("GET http://blocked.test/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400 Bad Request", "more than one Host"),
        ("GET http://blocked.test/ HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "a", count: 3000) + "\r\n\r\n", "431 Request Header Fields Too Large", "exceed 2048 bytes"),
        ("GET http://blocked.test/ HTTP/3.0\r\nHost: a\r\n\r\n", "505 HTTP Version Not Supported", "unsupported HTTP version"),
        ("CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n", "403 Forbidden", "no route matches api.test:443"),
        ("CONNECT blocked.test HTTP/1.1\r\nHost: blocked.test\r\n\r\n", "400 Bad Request", "CONNECT needs host:port"),
    ])
    func malformedRequestsGetAClearErrorAndAClose(_ request: String, _ status: String, _ fragment: String) throws {
        try Self.withServer { port in
            let r = try Self.exchange(port: port, request)
            #expect(r.response.hasPrefix("HTTP/1.1 \(status)\r\n"), "\(r.response.prefix(80))")
            #expect(r.response.contains(fragment))
            #expect(r.response.contains("Connection: close\r\n"))
            #expect(r.closed)
        }
    }

    @Test func aDeniedUploadIsAnsweredAndClosed() throws {
        try Self.withServer { port in
            let r = try Self.exchange(port: port, "PUT http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\nContent-Length: 100000\r\n\r\n" + String(repeating: "x", count: 1000))
            #expect(r.response.hasPrefix("HTTP/1.1 403 Forbidden\r\n"))
            #expect(r.closed)
        }
    }
}
