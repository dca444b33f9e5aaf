import Testing
import HTTP1
@testable import ProxyServer

/// The worker's exchange storage: what it keeps between requests is bounded, whatever heads passed through it.
@Suite struct ExchangeStoreTests {
    /// A request head of `bytes` bytes or so (one long field), as a client may send up to max_header_bytes.
    static func head(bytes: Int) throws -> RequestHead {
        let text = "GET http://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\nCookie: "
            + String(repeating: "c", count: bytes) + "\r\n\r\n"
        return try HeadParser.parseRequest(Array(text.utf8))
    }

    @Test func anExchangeOfSmallHeadsIsKeptForReuse() throws {
        let store = ExchangeStore(keep: 4)
        let storage = store.take()
        storage.pointee.request = try Self.head(bytes: 100)
        storage.pointee.upstreamRequestHead = Array(repeating: 0x41, count: 300)
        storage.pointee.clientResponseHead = Array(repeating: 0x42, count: 300)
        store.give(storage)
        #expect(store.kept == 1)
    }

    /// 256 connections with heads near the 64 KiB limit, then closed: the store must not pin their buffers
    /// (four of up to 64 KiB per exchange, 256 exchanges per worker: tens of MiB held for good).
    @Test func anExchangeThatHeldLargeHeadsIsNotKept() throws {
        let store = ExchangeStore(keep: 256)
        var given: [UnsafeMutablePointer<Exchange>] = []
        for _ in 0..<256 {
            let storage = store.take()
            storage.pointee.request = try Self.head(bytes: 60_000)
            storage.pointee.upstreamRequestHead = Array(repeating: 0x41, count: 60_100)
            storage.pointee.clientResponseHead = Array(repeating: 0x42, count: 60_100)
            given.append(storage)
        }
        for storage in given { store.give(storage) }
        var retained = 0
        for _ in 0..<store.kept {
            let storage = store.take()
            retained += storage.pointee.upstreamRequestHead.capacity + storage.pointee.clientResponseHead.capacity
        }
        #expect(retained <= 256 * 32 * 1024, "the store keeps \(retained) bytes of head buffers after the connections closed")
    }
}

extension ExchangeStoreTests {
    /// A large request head refused before it went anywhere (an unrouted host, a 407): nothing was written
    /// upstream, but the parsed head's own buffer is as large.
    @Test func anExchangeThatHeldALargeRefusedRequestHeadIsNotKept() throws {
        let store = ExchangeStore(keep: 4)
        let storage = store.take()
        storage.pointee.request = try Self.head(bytes: 60_000)
        store.give(storage)
        #expect(store.kept == 0)
    }
}
