/// Runtimes a reload replaced, held by the main thread until nothing else does (workers take the new one at
/// their next turn; exchanges in flight finish on the old one). Releasing them here, on the main thread's
/// once-a-second watch, means the last release of a large table (its routes, index and TLS contexts) is never
/// made by a worker's loop between two requests.
struct RetiredRuntimes<Runtime: AnyObject> {
    private var held: [Runtime] = []

    mutating func retire(_ runtime: Runtime) {
        held.append(runtime)
    }

    /// Releases those only this list still holds; returns how many remain.
    @discardableResult
    mutating func releaseUnused() -> Int {
        var i = held.count - 1
        while i >= 0 {
            if isKnownUniquelyReferenced(&held[i]) { held.remove(at: i) }
            i -= 1
        }
        return held.count
    }

    var count: Int { held.count }
}
