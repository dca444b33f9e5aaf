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
        let lease = store.take()
        let storage = lease.storage
        storage.pointee.request = try Self.head(bytes: 100)
        storage.pointee.upstreamRequestHead = Array(repeating: 0x41, count: 300)
        storage.pointee.clientResponseHead = Array(repeating: 0x42, count: 300)
        store.give(lease)
        #expect(store.kept == 1)
    }

    /// 256 connections with heads near the 64 KiB limit, then closed: the store must not pin their buffers
    /// (four of up to 64 KiB per exchange, 256 exchanges per worker: tens of MiB held for good).
    @Test func anExchangeThatHeldLargeHeadsIsNotKept() throws {
        let store = ExchangeStore(keep: 256)
        final class Held {
            var lease: ExchangeLease?
            init(_ lease: consuming ExchangeLease) { self.lease = consume lease }
        }
        var given: [Held] = []
        for _ in 0..<256 {
            let lease = store.take()
            let storage = lease.storage
            storage.pointee.request = try Self.head(bytes: 60_000)
            storage.pointee.upstreamRequestHead = Array(repeating: 0x41, count: 60_100)
            storage.pointee.clientResponseHead = Array(repeating: 0x42, count: 60_100)
            given.append(Held(lease))
        }
        for held in given { if let lease = held.lease.take() { store.give(lease) } }
        var retained = 0
        for _ in 0..<store.kept {
            let lease = store.take()
            retained += lease.storage.pointee.upstreamRequestHead.capacity + lease.storage.pointee.clientResponseHead.capacity
        }
        #expect(retained <= 256 * 32 * 1024, "the store keeps \(retained) bytes of head buffers after the connections closed")
    }
}

extension ExchangeStoreTests {
    /// A large request head refused before it went anywhere (an unrouted host, a 407): nothing was written
    /// upstream, but the parsed head's own buffer is as large.
    @Test func anExchangeThatHeldALargeRefusedRequestHeadIsNotKept() throws {
        let store = ExchangeStore(keep: 4)
        let lease = store.take()
        lease.storage.pointee.request = try Self.head(bytes: 60_000)
        store.give(lease)
        #expect(store.kept == 0)
    }
}

extension ExchangeStoreTests {
    /// What a finished exchange held is overwritten when it is given back, before another connection may take the
    /// same buffers: no byte of a credential stays in them.
    @Test func anExchangeGivenBackHoldsNoByteOfTheLastRequest() throws {
        let store = ExchangeStore(keep: 4)
        let lease = store.take()
        let storage = lease.storage
        let secret = "Bearer planted-credential-0123456789"
        let text = "GET http://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\nAuthorization: \(secret)\r\n\r\n"
        storage.pointee.request = try HeadParser.parseRequest(Array(text.utf8))
        storage.pointee.upstreamRequestHead = Array(text.utf8)
        storage.pointee.clientResponseHead = Array("HTTP/1.1 200 OK\r\nSet-Cookie: \(secret)\r\n\r\n".utf8)
        // Where those bytes live: the buffers keep their capacity through `give`, so they stay readable here.
        func span(_ bytes: [UInt8]) -> (UnsafePointer<UInt8>, Int) {
            bytes.withUnsafeBufferPointer { (UnsafePointer($0.baseAddress!), $0.count) }
        }
        let upstream = span(storage.pointee.upstreamRequestHead)
        let client = span(storage.pointee.clientResponseHead)
        store.give(lease)
        #expect(store.kept == 1)
        let needle = Array("planted-credential".utf8)
        for (base, count) in [upstream, client] {
            let bytes = Array(UnsafeBufferPointer(start: base, count: count))
            #expect(!bytes.indices.contains { bytes[$0...].starts(with: needle) }, "a given-back buffer still holds the credential")
            #expect(bytes.allSatisfy { $0 == 0 })
        }
        let againLease = store.take()
        let again = againLease.storage
        #expect(again == storage)
        #expect(again.pointee.upstreamRequestHead.capacity >= text.utf8.count)  // kept for reuse
        var spare = again.pointee.takeRequestHead()
        #expect(spare.headers.first("Authorization") == nil)
        spare.clearKeepingCapacity()
        store.give(againLease)
    }
}

extension ExchangeStoreTests {
    /// A lease its holder dropped without giving it back (the holder went first) frees its storage: the store
    /// neither keeps nor hands out storage it did not get back.
    @Test func aDroppedLeaseIsNotTheStoresAnyMore() {
        let store = ExchangeStore(keep: 4)
        do { _ = store.take() }
        #expect(store.kept == 0)
        let lease = store.take()
        store.give(lease)
        #expect(store.kept == 1)
    }
}
