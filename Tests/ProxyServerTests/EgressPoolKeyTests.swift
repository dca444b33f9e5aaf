import Testing
import ProxyConfig
@testable import ProxyServer

/// Pooled upstream connections are never shared across egress paths: direct, another corporate proxy, or the
/// same proxy with other credentials.
@Suite struct EgressPoolKeyTests {
    final class Context {}

    @Test func egressIsPartOfThePoolKey() {
        let context = ObjectIdentifier(Context.self)
        let corp = EgressProxy(host: "corp", port: 3128, credentialsFile: "/a.cred")
        let direct = PoolKey(host: "api.example.com", port: 443, connect: nil, context: context)
        let viaCorp = PoolKey(host: "api.example.com", port: 443, connect: nil, context: context, egress: .proxy(corp))
        var otherCredentials = corp
        otherCredentials.credentialsFile = "/b.cred"
        let viaCorpAsOther = PoolKey(host: "api.example.com", port: 443, connect: nil, context: context, egress: .proxy(otherCredentials))
        let viaOther = PoolKey(host: "api.example.com", port: 443, connect: nil, context: context,
                               egress: .proxy(EgressProxy(host: "corp2", port: 3128, credentialsFile: "/a.cred")))
        let keys: Set<PoolKey> = [direct, viaCorp, viaCorpAsOther, viaOther]
        #expect(keys.count == 4)
        #expect(viaCorp == PoolKey(host: "api.example.com", port: 443, connect: nil, context: context, egress: .proxy(corp)))
    }
}
