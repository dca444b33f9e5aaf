import Foundation
import Logging
import Testing
import ProxyConfig
@testable import ProxyServer

/// RFC 9112 answers the proxy gives on its own, on the forward listener and on a sidecar listener: an invalid
/// Host, a request Transfer-Encoding that does not end in chunked, and request lines too long in their method or
/// target. The routes deny, so a request that passes these checks is answered 403: any other status is theirs.
@Suite(.serialized) struct ConformanceTests {
    /// `body` gets the forward listener's port and the sidecar listener's.
    static func withServer(_ body: (_ forward: Int, _ sidecar: Int) throws -> Void) throws {
        ProxyServer.prepareProcess()
        // Two listeners cannot both ask for port 0 on one address: the sidecar gets a port the kernel just freed.
        let config = try ConfigLoader.parse("""
            [proxy]
            listen = "127.0.0.1:0"
            workers = 1
            max_header_bytes = 2048
            [[listener]]
            listen = "127.0.0.1:\(try freePort())"
            upstream = "https://blocked.test"
            [[route]]
            name = "blocked"
            host = "blocked.test"
            action = "deny"
            """, file: "test.conf", baseDirectory: "/tmp")
        let server = try ProxyServer(runtime: try ProxyRuntime(config: config), logger: Logger(label: "test"))
        try server.bind()
        server.start()
        defer { server.stop() }
        try body(server.port, try #require(server.listenerPorts.first))
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        try #require(bound)
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static let invalidHosts = ["", "blocked.test/x", "user@blocked.test", "blocked.test, other.test", "blocked.test,other.test",
                               "blocked.test:80x", "blocked.test:99999", "blocked test", "[::1", "blocked.test:80:80", ":80"]

    @Test(arguments: invalidHosts)
    func anInvalidHostIsRefusedOnTheForwardListener(_ host: String) throws {
        try Self.withServer { forward, _ in
            let r = try ListenerTests.exchange(port: forward, "GET http://blocked.test/ HTTP/1.1\r\nHost: \(host)\r\n\r\n")
            #expect(r.response.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(r.response.prefix(200))")
            #expect(r.response.contains("invalid Host header"))
            #expect(r.closed)
        }
    }

    @Test(arguments: invalidHosts)
    func anInvalidHostIsRefusedOnASidecarListenerBeforeItIsRewritten(_ host: String) throws {
        try Self.withServer { _, sidecar in
            let r = try ListenerTests.exchange(port: sidecar, "GET /x HTTP/1.1\r\nHost: \(host)\r\n\r\n")
            #expect(r.response.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(r.response.prefix(200))")
            #expect(r.response.contains("invalid Host header"))
            #expect(r.closed)
        }
    }

    @Test(arguments: ["blocked.test", "blocked.test:8080", "BLOCKED.test:", "127.0.0.1:9", "[::1]:80", "bl%41cked.test", "a_b.test"])
    func aValidHostPasses(_ host: String) throws {
        try Self.withServer { forward, sidecar in
            let r = try ListenerTests.exchange(port: forward, "GET http://blocked.test/ HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n")
            #expect(r.response.hasPrefix("HTTP/1.1 403 Forbidden\r\n"), "\(r.response.prefix(200))")
            let s = try ListenerTests.exchange(port: sidecar, "GET /x HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n")
            #expect(s.response.hasPrefix("HTTP/1.1 403 Forbidden\r\n"), "\(s.response.prefix(200))")
        }
    }

    /// RFC 9112 §6.3: the body length of such a request cannot be known: 400, and the connection closes.
    @Test(arguments: ["gzip", "chunked, gzip", "chunked, identity", "identity"])
    func aRequestTransferEncodingNotEndingInChunkedIs400(_ codings: String) throws {
        try Self.withServer { forward, sidecar in
            for port in [forward, sidecar] {
                let target = port == forward ? "http://blocked.test/" : "/"
                let r = try ListenerTests.exchange(port: port, "POST \(target) HTTP/1.1\r\nHost: blocked.test\r\nTransfer-Encoding: \(codings)\r\n\r\n")
                #expect(r.response.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(r.response.prefix(200))")
                #expect(r.closed)
            }
        }
    }

    /// RFC 9112 §6.1: chunked is never applied more than once; a request that says so is an error of the request
    /// (400, and the connection closes), not a coding the proxy lacks (501). In one field or in two.
    @Test(arguments: ["Transfer-Encoding: chunked, chunked", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                      "Transfer-Encoding: chunked, gzip, chunked"])
    func chunkedAppliedMoreThanOnceIs400(_ fields: String) throws {
        try Self.withServer { forward, sidecar in
            for port in [forward, sidecar] {
                let target = port == forward ? "http://blocked.test/" : "/"
                let r = try ListenerTests.exchange(port: port, "POST \(target) HTTP/1.1\r\nHost: blocked.test\r\n\(fields)\r\n\r\n")
                #expect(r.response.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(r.response.prefix(200))")
                #expect(r.response.contains("chunked more than once"), "\(r.response.prefix(400))")
                #expect(r.closed)
            }
        }
    }

    /// A coding the proxy does not implement before a final chunked stays 501 (RFC 9112 §6.1).
    @Test func anUnimplementedCodingBeforeChunkedIs501() throws {
        try Self.withServer { forward, _ in
            let r = try ListenerTests.exchange(port: forward, "POST http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            #expect(r.response.hasPrefix("HTTP/1.1 501 Not Implemented\r\n"), "\(r.response.prefix(200))")
        }
    }

    /// A method longer than the head limit is a bad request line, not a header section too large (431); a
    /// target that long is 414; the header section is 431 only when the fields make it so.
    @Test func anOversizedRequestLineIsNamedForWhatIsTooLong() throws {
        try Self.withServer { forward, sidecar in
            for port in [forward, sidecar] {
                let method = try ListenerTests.exchange(port: port, String(repeating: "G", count: 100_000) + " / HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
                #expect(method.response.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(method.response.prefix(200))")
                #expect(method.closed)
                let spaceless = try ListenerTests.exchange(port: port, String(repeating: "G", count: 3000))
                #expect(spaceless.response.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(spaceless.response.prefix(200))")
                let longish = try ListenerTests.exchange(port: port, String(repeating: "G", count: 100) + " / HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
                #expect(longish.response.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(longish.response.prefix(200))")
                let target = port == forward ? "http://blocked.test/" : "/"
                let uri = try ListenerTests.exchange(port: port, "GET \(target)\(String(repeating: "a", count: 3000)) HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
                #expect(uri.response.hasPrefix("HTTP/1.1 414 URI Too Long\r\n"), "\(uri.response.prefix(200))")
                #expect(uri.closed)
                let fields = try ListenerTests.exchange(port: port, "GET \(target) HTTP/1.1\r\nHost: blocked.test\r\nX: \(String(repeating: "a", count: 3000))\r\n\r\n")
                #expect(fields.response.hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "\(fields.response.prefix(200))")
            }
        }
    }
}
