/// The route table compiled at load into one trie, so that deciding a request costs the same at ten routes as
/// at a hundred thousand: host names by their labels read from the right (exact hosts and `*.suffix` patterns
/// hang off the same labels, `*` off the root), then the route's port (or none), then the path prefix segment
/// by segment. Every node sits in one open-addressing hash table keyed by (parent, kind, bytes), so a step down
/// is one hash probe, and the table stores no Swift object per route.
///
/// The answer is exactly the linear scan's (`Router.scanFirstMatch`): the lowest position among the routes that
/// match host, port and path, because each node keeps the lowest position of the routes that end there and of
/// its whole subtree (a walk stops once nothing below can beat what it has). The property test in the unit
/// tests compares the two on random tables and requests.
struct RouteIndex: Sendable {
    /// What a node's key is. Host labels are bytes between dots; the three kinds of host end are keyed by the
    /// route's port (two bytes, 0 for a route without one) and root a path tree; path nodes are segments, and a
    /// partial is the start of the segment after its parent (a string prefix, or "" for a prefix ending in /).
    enum Kind: UInt8 {
        case hostLabel = 0, exactHost, subdomains, anyHost, segment, partial
    }

    struct Node {
        var parent: Int32
        var keyStart: UInt32
        var keyLength: UInt32
        /// Host nodes: which kinds of host end hang off this node (bits: exact, subdomains, any). Path nodes:
        /// the length of the longest partial child + 1 (0: none).
        var flags: UInt32
        var kind: UInt8
        /// The lowest route position ending at this node (Int32.max: none).
        var here: Int32
        /// The lowest route position at or below this node (path nodes only).
        var below: Int32
        var hash: UInt32
    }

    private var nodes: [Node] = []
    private var keys: [UInt8] = []
    /// Node ids (+1; 0 is empty), open addressing with linear probing, a power of two long.
    private var slots: [Int32] = []
    /// Path-scoped routes of each path tree, for tunnel planning: `pathRoutes[start..<end]` (positions
    /// ascending) for the range `pathRouteRanges[root]` packs as start << 32 | end.
    private var pathRoutes: [Int32] = []
    private var pathRouteRanges: [Int32: Int] = [:]

    static let none = Int32.max
    private static let slash = UInt8(ascii: "/"), dot = UInt8(ascii: ".")

    init() {
        nodes.append(Node(parent: -1, keyStart: 0, keyLength: 0, flags: 0, kind: Kind.hostLabel.rawValue, here: Self.none,
                          below: Self.none, hash: 0))
        slots = [Int32](repeating: 0, count: 16)
    }

    init(routes: [Route]) {
        self.init()
        let pathCount = routes.reduce(0) { $0 + ($1.pathPrefix == nil ? 0 : 1) }
        reserve(nodes: routes.count * 3 + pathCount)
        var scoped: [(root: Int32, position: Int32)] = []
        for (position, route) in routes.enumerated() {
            let root = insertHost(route.host, port: route.port)
            if route.pathPrefix != nil { scoped.append((root, Int32(position))) }
            // A prefix is canonical, so it starts with "/"; one that does not never matches (as in the scan).
            if let prefix = route.pathPrefix, prefix.utf8.first != UInt8(ascii: "/") { continue }
            let end = insertPath(route.pathPrefix, rule: route.pathPrefixMatch, root: root, position: Int32(position))
            if nodes[Int(end)].here == Self.none { nodes[Int(end)].here = Int32(position) }
        }
        // Grouped by tree, in file order within each (the sort is stable on positions already ascending).
        scoped.sort { $0.root != $1.root ? $0.root < $1.root : $0.position < $1.position }
        pathRoutes = scoped.map(\.position)
        var start = 0
        while start < scoped.count {
            var end = start
            while end < scoped.count && scoped[end].root == scoped[start].root { end += 1 }
            pathRouteRanges[scoped[start].root] = start << 32 | end
            start = end
        }
        nodes = nodes.compacted()
        keys = keys.compacted()
        pathRoutes = pathRoutes.compacted()
    }

    // MARK: looking up

    /// The lowest position of a route matching `host`, `port` and `path` (nil path: a tunnel, only routes without
    /// a path take part), or nil.
    func firstMatch(host: String, port: Int, path: Substring?) -> Int? {
        var best = Self.none
        forEachTree(host: host, port: port) { root in
            walk(root: root, path: path, best: &best)
        }
        return best == Self.none ? nil : Int(best)
    }

    /// The path-scoped routes of the trees `host` and `port` reach, in file order.
    func pathScopedCandidates(host: String, port: Int) -> [Int] {
        var all: [Int32] = []
        forEachTree(host: host, port: port) { root in
            if let range = pathRouteRanges[root] { all += pathRoutes[(range >> 32)..<(range & 0xFFFF_FFFF)] }
        }
        return all.sorted().map(Int.init)
    }

    /// Calls `body` with the root of each path tree whose host pattern and port fit the request.
    private func forEachTree(host: String, port: Int, _ body: (Int32) -> Void) {
        let rootFlags = nodes[0].flags
        if rootFlags & 0b100 != 0 { portTrees(of: 0, kind: .anyHost, port: port, body) }
        var host = host
        host.withUTF8 { h in
            var node: Int32 = 0
            var end = h.count
            while true {
                var start = end
                while start > 0 && h[start - 1] != Self.dot { start -= 1 }
                guard let next = child(node, .hostLabel, UnsafeBufferPointer(rebasing: h[start..<end])) else { return }
                node = next
                let flags = nodes[Int(node)].flags
                if start == 0 {
                    if flags & 0b001 != 0 { portTrees(of: node, kind: .exactHost, port: port, body) }
                    return
                }
                // `*.suffix` needs at least one byte before the dot.
                if start >= 2 && flags & 0b010 != 0 { portTrees(of: node, kind: .subdomains, port: port, body) }
                end = start - 1
            }
        }
    }

    private func portTrees(of node: Int32, kind: Kind, port: Int, _ body: (Int32) -> Void) {
        var key: (UInt8, UInt8) = (UInt8(truncatingIfNeeded: port >> 8), UInt8(truncatingIfNeeded: port))
        if port > 0 && port <= 0xFFFF, let root = withUnsafeBytes(of: &key, { child(node, kind, $0.bindMemory(to: UInt8.self)) }) {
            body(root)
        }
        var any: (UInt8, UInt8) = (0, 0)
        if let root = withUnsafeBytes(of: &any, { child(node, kind, $0.bindMemory(to: UInt8.self)) }) { body(root) }
    }

    /// Lowers `best` to the lowest route of the tree at `root` that matches `path`.
    private func walk(root: Int32, path: Substring?, best: inout Int32) {
        guard nodes[Int(root)].below < best else { return }
        best = min(best, nodes[Int(root)].here)
        guard var path else { return }
        path.withUTF8 { p in
            guard p.first == Self.slash else { return }
            var node = root
            var start = 1
            while nodes[Int(node)].below < best {
                var end = start
                while end < p.count && p[end] != Self.slash { end += 1 }
                // The path goes on with "/" + segment: partials of this node may match its start.
                let longest = Int(nodes[Int(node)].flags)
                if longest > 0 {
                    // Each longer start of the segment extends the hash of the shorter one: a long partial
                    // costs one pass over the segment, not one per length.
                    var state = Self.seed(node, .partial)
                    for length in 0..<min(longest, end - start + 1) {
                        if length > 0 { state = Self.add(state, p[start + length - 1]) }
                        let bytes = UnsafeBufferPointer(rebasing: p[start..<(start + length)])
                        if let partial = child(node, .partial, bytes, hash: Self.fold(state)) {
                            best = min(best, nodes[Int(partial)].here)
                        }
                    }
                }
                guard let next = child(node, .segment, UnsafeBufferPointer(rebasing: p[start..<end])) else { return }
                node = next
                best = min(best, nodes[Int(node)].here)
                guard end < p.count else { return }
                start = end + 1
            }
        }
    }

    // MARK: the hash table

    /// FNV-1a, seeded with the parent and kind; `state` then `fold` lets a caller extend a key byte by byte.
    private static func seed(_ parent: Int32, _ kind: Kind) -> UInt64 {
        (0xcbf2_9ce4_8422_2325 ^ (UInt64(UInt32(bitPattern: parent)) << 8 | UInt64(kind.rawValue))) &* 0x100_0000_01b3
    }

    private static func add(_ state: UInt64, _ byte: UInt8) -> UInt64 { (state ^ UInt64(byte)) &* 0x100_0000_01b3 }

    private static func fold(_ state: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: state ^ (state >> 32)) }

    private static func hash(_ parent: Int32, _ kind: Kind, _ bytes: UnsafeBufferPointer<UInt8>) -> UInt32 {
        var h = seed(parent, kind)
        for b in bytes { h = add(h, b) }
        return fold(h)
    }

    private func child(_ parent: Int32, _ kind: Kind, _ bytes: UnsafeBufferPointer<UInt8>) -> Int32? {
        child(parent, kind, bytes, hash: Self.hash(parent, kind, bytes))
    }

    private func child(_ parent: Int32, _ kind: Kind, _ bytes: UnsafeBufferPointer<UInt8>, hash h: UInt32) -> Int32? {
        slots.withUnsafeBufferPointer { slots in
            nodes.withUnsafeBufferPointer { nodes in
                keys.withUnsafeBufferPointer { keys in
                    let mask = slots.count - 1
                    var i = Int(h) & mask
                    while true {
                        let id = slots[i]
                        if id == 0 { return nil }
                        let n = nodes[Int(id - 1)]
                        if n.hash == h && n.parent == parent && n.kind == kind.rawValue && Int(n.keyLength) == bytes.count {
                            var same = true
                            let start = Int(n.keyStart)
                            for k in 0..<bytes.count where keys[start + k] != bytes[k] { same = false; break }
                            if same { return id - 1 }
                        }
                        i = (i + 1) & mask
                    }
                }
            }
        }
    }

    // MARK: building

    private mutating func reserve(nodes count: Int) {
        nodes.reserveCapacity(count)
        var size = 16
        while size < count * 2 { size <<= 1 }
        if size > slots.count { rehash(size) }
    }

    private mutating func rehash(_ size: Int) {
        slots = [Int32](repeating: 0, count: size)
        let mask = size - 1
        for id in nodes.indices.dropFirst() {
            var i = Int(nodes[id].hash) & mask
            while slots[i] != 0 { i = (i + 1) & mask }
            slots[i] = Int32(id + 1)
        }
    }

    private mutating func childOrNew(_ parent: Int32, _ kind: Kind, _ bytes: UnsafeBufferPointer<UInt8>) -> Int32 {
        if let found = child(parent, kind, bytes) { return found }
        if (nodes.count + 1) * 2 > slots.count { rehash(slots.count * 2) }
        let h = Self.hash(parent, kind, bytes)
        let id = nodes.count
        nodes.append(Node(parent: parent, keyStart: UInt32(keys.count), keyLength: UInt32(bytes.count), flags: 0,
                          kind: kind.rawValue, here: Self.none, below: Self.none, hash: h))
        keys.append(contentsOf: bytes)
        let mask = slots.count - 1
        var i = Int(h) & mask
        while slots[i] != 0 { i = (i + 1) & mask }
        slots[i] = Int32(id + 1)
        return Int32(id)
    }

    /// The root of the path tree for this host pattern and port. Labels are split as `forEachTree` splits a
    /// request's host: from the right, at each dot.
    private mutating func insertHost(_ pattern: HostPattern, port: Int?) -> Int32 {
        var node: Int32 = 0
        let kind: Kind
        var name: String
        switch pattern {
        case .any: kind = .anyHost; name = ""
        case .exact(let host): kind = .exactHost; name = host
        case .subdomains(let base): kind = .subdomains; name = base
        }
        if kind != .anyHost {
            name.withUTF8 { h in
                var end = h.count
                while true {
                    var start = end
                    while start > 0 && h[start - 1] != Self.dot { start -= 1 }
                    node = childOrNew(node, .hostLabel, UnsafeBufferPointer(rebasing: h[start..<end]))
                    if start == 0 { break }
                    end = start - 1
                }
            }
        }
        let bit: UInt32 = kind == .exactHost ? 0b001 : kind == .subdomains ? 0b010 : 0b100
        nodes[Int(node)].flags |= bit
        var key: (UInt8, UInt8) = (UInt8(truncatingIfNeeded: (port ?? 0) >> 8), UInt8(truncatingIfNeeded: port ?? 0))
        return withUnsafeBytes(of: &key) { childOrNew(node, kind, $0.bindMemory(to: UInt8.self)) }
    }

    /// The node a route's path prefix ends at (the tree's root for a route without one), with `below` lowered
    /// on the way. Segments are split as `walk` splits a request's path.
    private mutating func insertPath(_ prefix: String?, rule: PathPrefixMatch, root: Int32, position: Int32) -> Int32 {
        var node = root
        nodes[Int(node)].below = min(nodes[Int(node)].below, position)
        guard var prefix else { return node }
        prefix.withUTF8 { p in
            // "/a/b" whole segments ends at node b; a string prefix, or one ending in "/", is the start of the
            // segment after its parent: a partial.
            var start = 1
            while true {
                var end = start
                while end < p.count && p[end] != Self.slash { end += 1 }
                let segment = UnsafeBufferPointer(rebasing: p[start..<end])
                if end == p.count {
                    if rule == .segment && !segment.isEmpty {
                        node = childOrNew(node, .segment, segment)
                    } else {
                        let parent = node
                        node = childOrNew(node, .partial, segment)
                        nodes[Int(parent)].flags = max(nodes[Int(parent)].flags, UInt32(segment.count + 1))
                    }
                    nodes[Int(node)].below = min(nodes[Int(node)].below, position)
                    return
                }
                node = childOrNew(node, .segment, segment)
                nodes[Int(node)].below = min(nodes[Int(node)].below, position)
                start = end + 1
            }
        }
        return node
    }
}

extension Array {
    /// A copy without spare capacity (a table built by appending keeps up to half again as much).
    func compacted() -> [Element] {
        [Element](unsafeUninitializedCapacity: count) { buffer, initialized in
            _ = buffer.initialize(from: self)
            initialized = count
        }
    }
}
