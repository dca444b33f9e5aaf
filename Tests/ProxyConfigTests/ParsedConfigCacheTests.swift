import Foundation
import Testing
@testable import ProxyConfig

/// TOMLKit never frees a parsed document, so a reload must not parse a config text it has parsed before.
@Suite struct ParsedConfigCacheTests {
    static func file(_ text: String) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cfgcache-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = "\(dir)/proxy.conf"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func aTextSeenBeforeIsNotParsedAgain() throws {
        let path = try Self.file("[proxy]\nlisten = \"127.0.0.1:3128\"\n")
        let cache = ParsedConfigCache(capacity: 4)
        let first = try cache.load(file: path)
        let second = try cache.load(file: path)
        #expect(first.proxy.listen == second.proxy.listen)
        #expect(cache.parses == 1)
        try "[proxy]\nlisten = \"127.0.0.1:3129\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try cache.load(file: path).proxy.listen.port == 3129)
        #expect(cache.parses == 2)
    }

    @Test func aBrokenTextFailsTheSameWayWithoutParsingAgain() throws {
        let path = try Self.file("[proxy\nlisten = 1\n")
        let cache = ParsedConfigCache(capacity: 4)
        var messages: [String] = []
        for _ in 0..<3 {
            do {
                _ = try cache.load(file: path)
            } catch let error as ConfigError {
                messages.append(error.description)
            }
        }
        #expect(messages.count == 3 && Set(messages).count == 1)
        #expect(cache.parses == 1)
    }

    @Test func theEnvironmentIsPartOfTheKey() throws {
        let path = try Self.file("[proxy]\nlisten = \"127.0.0.1:3128\"\n")
        let cache = ParsedConfigCache(capacity: 4)
        _ = try cache.load(file: path)
        let overridden = try cache.load(file: path, environment: ["MTLS_PROXY_LISTEN": "127.0.0.1:4000"])
        #expect(overridden.proxy.listen.port == 4000)
    }

    @Test func itHoldsAtMostCapacityTexts() throws {
        let path = try Self.file("")
        let cache = ParsedConfigCache(capacity: 2)
        for port in 3000..<3010 {
            try "[proxy]\nlisten = \"127.0.0.1:\(port)\"\n".write(toFile: path, atomically: true, encoding: .utf8)
            _ = try cache.load(file: path)
        }
        #expect(cache.count == 2)
    }
}
