/// The storage of `Exchange`s for one worker's connections. A connection holds one only while a request is in
/// flight (from its first byte to the end of its response) and gives it back when it goes idle, so an idle
/// keep-alive connection holds none; a busy connection takes back the one it gave, with the capacity of its head
/// buffers, at no allocation.
final class ExchangeStore {
    // `@exclusivity(unchecked)`: only the worker's thread touches it, never during another access to it; the
    // dynamic exclusivity check Swift makes on a class's stored property costs about 80 instructions per access.
    @exclusivity(unchecked) private var free: [UnsafeMutablePointer<Exchange>] = []
    /// Kept for reuse at most; beyond, storage given back is freed.
    private let keep: Int
    /// An exchange whose head buffers grew beyond this (heads of tens of KiB, up to max_header_bytes each) is
    /// freed rather than kept: `keep` of them would pin tens of MiB per worker after their connections closed.
    static let keptBufferBytes = 32 * 1024

    init(keep: Int = 256) {
        self.keep = keep
        free.reserveCapacity(keep)
    }

    deinit {
        for storage in free {
            storage.deinitialize(count: 1)
            storage.deallocate()
        }
    }

    /// A fresh `Exchange`.
    func take() -> UnsafeMutablePointer<Exchange> {
        if let storage = free.popLast() { return storage }
        let storage = UnsafeMutablePointer<Exchange>.allocate(capacity: 1)
        storage.initialize(to: Exchange())
        return storage
    }

    /// Gives `storage` back, emptied but for its buffers (what the finished exchange held is released now, not
    /// when the connection next gets a request).
    func give(_ storage: UnsafeMutablePointer<Exchange>) {
        storage.pointee.store()
        if free.count < keep && storage.pointee.headBufferBytes <= Self.keptBufferBytes {
            free.append(storage)
        } else {
            storage.deinitialize(count: 1)
            storage.deallocate()
        }
    }

    var kept: Int { free.count }
}
