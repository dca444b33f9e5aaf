import Testing
import ProxyConfig
@testable import ProxyServer

/// Pool keys hash cheaply (context, port, host length) but stay apart on every field: a pooled connection is never
/// handed to another identity, trust setting, host, port or dialled address.
@Suite struct PoolKeyTests {
    final class Context {}

    @Test func keysDifferingInAnyFieldAreDistinctPoolEntries() {
        let a = Context(), b = Context()
        let base = PoolKey(host: "api.example.test", port: 443, connect: nil, context: ObjectIdentifier(a))
        var otherContext = base; otherContext.context = ObjectIdentifier(b)
        var otherHost = base; otherHost.host = "api.example.tesu"  // same length: same hash input
        var otherPort = base; otherPort.port = 8443
        var otherConnect = base; otherConnect.connect = HostPort(host: "127.0.0.1", port: 443)
        let keys = [base, otherContext, otherHost, otherPort, otherConnect]
        var table: [PoolKey: Int] = [:]
        for (i, key) in keys.enumerated() { table[key] = i }
        #expect(table.count == keys.count)
        for (i, key) in keys.enumerated() { #expect(table[key] == i) }
        #expect(base != otherContext)
        #expect(base.hashValue == PoolKey(host: "api.example.test", port: 443, connect: nil, context: ObjectIdentifier(a)).hashValue)
    }
}
