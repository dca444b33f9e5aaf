import Foundation
import Logging
import Testing
import ProxyConfig
@testable import ProxyServer

/// bcrypt checks run on the hashing threads and come back to the worker's loop (Worker.post); failures are
/// limited per client address. Real sockets, in process, so the sanitizers see the threads.
@Suite(.serialized) struct AuthOffLoopTests {
    static func withAuthServer(_ body: (Int) throws -> Void) throws {
        ProxyServer.prepareProcess()
        let hash = try #require(ProxyAuthenticator.bcrypt(Array("open-sesame".utf8), "$2b$04$abcdefghijklmnopqrstuu"))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("auth-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try "ann:\(hash)\n".write(toFile: "\(dir)/users", atomically: true, encoding: .utf8)
        let config = try ConfigLoader.parse("""
            [proxy]
            listen = "127.0.0.1:0"
            workers = 1
            auth_file = "users"
            [[route]]
            name = "blocked"
            host = "blocked.test"
            action = "deny"
            """, file: "test.conf", baseDirectory: dir)
        try withRunningServer(config, body)
    }

    static func request(_ password: String) -> String {
        let token = Data("ann:\(password)".utf8).base64EncodedString()
        return "GET http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\nProxy-Authorization: Basic \(token)\r\nConnection: close\r\n\r\n"
    }

    @Test func rightPasswordPassesWrongOnesAreLimited() throws {
        try Self.withAuthServer { port in
            // The right password reaches the route (denied by it: 403, not 407).
            #expect(try ListenerTests.exchange(port: port, Self.request("open-sesame")).response.hasPrefix("HTTP/1.1 403 "))
            var statuses: [String] = []
            for i in 0..<12 {
                let r = try ListenerTests.exchange(port: port, Self.request("wrong-\(i)"))
                statuses.append(String(r.response.prefix(12)))
            }
            #expect(statuses.prefix(10).allSatisfy { $0 == "HTTP/1.1 407" }, "\(statuses)")
            #expect(statuses.suffix(2).allSatisfy { $0 == "HTTP/1.1 429" }, "\(statuses)")
            // A credential this worker accepted before still passes from the limited address (no hashing).
            #expect(try ListenerTests.exchange(port: port, Self.request("open-sesame")).response.hasPrefix("HTTP/1.1 403 "))
        }
    }
}
