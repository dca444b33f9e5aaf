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

    /// A fresh `Exchange`, leased to the caller until it gives it back.
    func take() -> ExchangeLease {
        if let storage = free.popLast() { return ExchangeLease(storage) }
        let storage = UnsafeMutablePointer<Exchange>.allocate(capacity: 1)
        storage.initialize(to: Exchange())
        return ExchangeLease(storage)
    }

    /// Takes the lease back, the storage emptied but for its buffers (what the finished exchange held is released
    /// now, not when the connection next gets a request).
    func give(_ lease: consuming ExchangeLease) {
        let storage = lease.end()
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

/// The right to one `Exchange`'s storage, from `ExchangeStore.take()` until `ExchangeStore.give` takes it back.
/// Noncopyable: there is one holder at a time (a connection, for the life of its exchange), and giving it back
/// consumes it, so it cannot be given back twice nor used after. A lease dropped without being given back (its
/// holder went first) frees its storage: nothing leaks, and the store never sees it again.
struct ExchangeLease: ~Copyable {
    /// Where the exchange lives: reached through the pointer, it skips Swift's dynamic exclusivity checks (see
    /// `ClientConnection.exchange`). Valid for as long as this lease exists.
    let storage: UnsafeMutablePointer<Exchange>

    fileprivate init(_ storage: UnsafeMutablePointer<Exchange>) { self.storage = storage }

    /// Ends the lease without freeing the storage: only the store, as it takes the storage back.
    fileprivate consuming func end() -> UnsafeMutablePointer<Exchange> {
        let storage = self.storage
        discard self
        return storage
    }

    deinit {
        storage.deinitialize(count: 1)
        storage.deallocate()
    }
}

extension Optional where Wrapped == ExchangeLease {
    /// The leased storage, read without taking the lease; nil when none is held.
    @inline(__always)
    var storage: UnsafeMutablePointer<Exchange>? {
        switch self {
        case .some(let lease): return lease.storage
        case .none: return nil
        }
    }
}
