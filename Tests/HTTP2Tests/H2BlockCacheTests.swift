import Testing
@testable import HTTP2

/// nghttp2's per-session memory: blocks reused from free lists, contents kept across reallocation, a bounded cache.
@Suite struct H2BlockCacheTests {
    @Test func freedBlocksAreReusedBySize() throws {
        let cache = H2BlockCache()
        let a = try #require(cache.allocate(100))
        cache.release(a)
        #expect(cache.cachedBytes == 128)
        let b = try #require(cache.allocate(90))  // the same class: the same block
        #expect(a == b)
        #expect(cache.cachedBytes == 0)
        let c = try #require(cache.allocate(20))  // a smaller class: another block
        #expect(c != b)
        cache.release(b)
        cache.release(c)
    }

    @Test func reallocationKeepsTheBytes() throws {
        let cache = H2BlockCache()
        var p = try #require(cache.allocate(10))
        for i in 0..<10 { p.storeBytes(of: UInt8(i), toByteOffset: i, as: UInt8.self) }
        for size in [40, 300, 5000, 20_000, 30] {
            p = try #require(cache.reallocate(p, size))
            #expect(H2BlockCache.capacity(p) >= min(size, 10))
            #expect((0..<10).allSatisfy { p.load(fromByteOffset: $0, as: UInt8.self) == UInt8($0) })
        }
        cache.release(p)
        let zeroed = try #require(cache.allocateZeroed(300, 3))
        #expect((0..<900).allSatisfy { zeroed.load(fromByteOffset: $0, as: UInt8.self) == 0 })
        cache.release(zeroed)
        #expect(cache.allocateZeroed(Int.max, 2) == nil)
        #expect(cache.allocate(Int.max - 8) == nil)  // nothing that cannot hold its header
    }

    @Test func theCacheIsBounded() throws {
        let cache = H2BlockCache()
        let blocks = try (0..<20).map { _ in try #require(cache.allocate(4000)) }  // 4 KiB blocks
        for b in blocks { cache.release(b) }
        #expect(cache.cachedBytes <= H2BlockCache.maxCachedBytes)
        #expect(cache.cachedBytes == 4 * 4096)
        let big = try #require(cache.allocate(100_000))  // from malloc, back to free
        cache.release(big)
        #expect(cache.cachedBytes == 4 * 4096)
    }
}
