#if canImport(Glibc)
import Glibc
#endif
import CNGHTTP2

/// nghttp2's memory for one session (its `nghttp2_mem`): blocks of a few sizes (64 bytes to 4 KiB) kept on free
/// lists once nghttp2 frees them, so that the stream, frame, header-copy and HPACK-entry blocks each request
/// needs are taken from the list instead of `malloc` (about a dozen per request otherwise). Larger blocks come
/// from `malloc` and go back to `free`. What the lists keep is bounded (`maxCachedBytes`); the rest is freed at
/// once, and everything when the session goes. One session, one thread: no locking.
final class H2BlockCache {
    /// Every block starts with this many bytes: its size class (or `large`) and, for a large block, its size.
    /// 16 keeps the payload as aligned as `malloc`'s.
    static let headerBytes = 16
    /// Block sizes 64, 128, ..., 4096 bytes (payloads 16 bytes smaller).
    static let classCount = 7
    static let large = 0xFF
    /// What the free lists may hold together; a block freed beyond it goes back to `malloc`.
    static let maxCachedBytes = 16 * 1024

    private var lists: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    private(set) var cachedBytes = 0

    init() {
        lists = .allocate(capacity: Self.classCount)
        lists.initialize(repeating: nil, count: Self.classCount)
    }

    deinit {
        for k in 0..<Self.classCount {
            var block = lists[k]
            while let b = block {
                block = b.load(as: UnsafeMutableRawPointer?.self)
                free(b)
            }
        }
        lists.deallocate()
    }

    @inline(__always)
    static func blockBytes(_ sizeClass: Int) -> Int { 64 << sizeClass }

    /// The smallest class whose payload holds `size`, or `large`.
    @inline(__always)
    static func sizeClass(_ size: Int) -> Int {
        var k = 0
        while k < classCount {
            if blockBytes(k) - headerBytes >= size { return k }
            k += 1
        }
        return large
    }

    func allocate(_ size: Int) -> UnsafeMutableRawPointer? {
        guard size >= 0, size <= Int.max - Self.headerBytes else { return nil }
        let k = Self.sizeClass(size)
        let block: UnsafeMutableRawPointer
        if k != Self.large, let cached = lists[k] {
            lists[k] = cached.load(as: UnsafeMutableRawPointer?.self)
            cachedBytes -= Self.blockBytes(k)
            block = cached
        } else {
            guard let made = malloc(k == Self.large ? size + Self.headerBytes : Self.blockBytes(k)) else { return nil }
            block = made
        }
        block.storeBytes(of: k, as: Int.self)
        block.storeBytes(of: size, toByteOffset: 8, as: Int.self)
        return block + Self.headerBytes
    }

    func release(_ pointer: UnsafeMutableRawPointer?) {
        guard let pointer else { return }
        let block = pointer - Self.headerBytes
        let k = block.load(as: Int.self)
        guard k != Self.large, cachedBytes + Self.blockBytes(k) <= Self.maxCachedBytes else {
            free(block)
            return
        }
        block.storeBytes(of: lists[k], as: UnsafeMutableRawPointer?.self)
        lists[k] = block
        cachedBytes += Self.blockBytes(k)
    }

    /// The payload bytes a block holds.
    @inline(__always)
    static func capacity(_ pointer: UnsafeMutableRawPointer) -> Int {
        let block = pointer - headerBytes
        let k = block.load(as: Int.self)
        return k == large ? block.load(fromByteOffset: 8, as: Int.self) : blockBytes(k) - headerBytes
    }

    func reallocate(_ pointer: UnsafeMutableRawPointer?, _ size: Int) -> UnsafeMutableRawPointer? {
        guard let pointer else { return allocate(size) }
        let capacity = Self.capacity(pointer)
        if size <= capacity { return pointer }
        guard let moved = allocate(size) else { return nil }
        moved.copyMemory(from: pointer, byteCount: min(capacity, size))
        release(pointer)
        return moved
    }

    func allocateZeroed(_ count: Int, _ size: Int) -> UnsafeMutableRawPointer? {
        let (total, overflow) = count.multipliedReportingOverflow(by: size)
        guard !overflow, let p = allocate(total) else { return nil }
        p.initializeMemory(as: UInt8.self, repeating: 0, count: total)
        return p
    }

    /// The `nghttp2_mem` that allocates from this cache; valid while the cache lives.
    var mem: nghttp2_mem {
        nghttp2_mem(mem_user_data: Unmanaged.passUnretained(self).toOpaque(), malloc: h2CacheMalloc, free: h2CacheFree,
                    calloc: h2CacheCalloc, realloc: h2CacheRealloc)
    }
}

private func cache(_ userData: UnsafeMutableRawPointer?) -> H2BlockCache {
    Unmanaged<H2BlockCache>.fromOpaque(userData!).takeUnretainedValue()
}

private let h2CacheMalloc: nghttp2_malloc = { size, userData in cache(userData).allocate(size) }
private let h2CacheFree: nghttp2_free = { pointer, userData in cache(userData).release(pointer) }
private let h2CacheCalloc: nghttp2_calloc = { count, size, userData in cache(userData).allocateZeroed(count, size) }
private let h2CacheRealloc: nghttp2_realloc = { pointer, size, userData in cache(userData).reallocate(pointer, size) }
