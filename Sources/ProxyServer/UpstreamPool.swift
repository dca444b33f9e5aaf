import CEventTLS
import ProxyConfig

/// Idle upstream connections of one worker, by `PoolKey`, most recently used first. While a connection is idle
/// the pool is its owner: anything it hears (the server closing, stray bytes, the idle timeout) retires it.
final class UpstreamPool: UpstreamChannelOwner {
    // `@exclusivity(unchecked)`: only the worker's thread touches it, never during another access to it; the
    // dynamic exclusivity check Swift makes on a class's stored property costs about 80 instructions per access.
    @exclusivity(unchecked) private var idle: [PoolKey: IdleList] = [:]

    /// One key's idle connections. A class, so a list is found with a plain lookup and changed in place (a
    /// dictionary's modify accessor allocates its frame on every call).
    private final class IdleList {
        @exclusivity(unchecked) var connections: [UpstreamConnection] = []
    }
    @exclusivity(unchecked) private(set) var idleCount = 0

    /// An idle connection for `key`, if one is open. A connection with unread bytes (a server that said more
    /// than its response, not yet noticed) is closed rather than handed out.
    func take(_ key: PoolKey) -> UpstreamConnection? {
        // Lists are changed in place and kept when empty, so taking and parking at steady state allocate nothing.
        guard let list = idle[key] else { return nil }
        while let connection = list.connections.popLast() {
            idleCount -= 1
            dropIfEmpty(key)
            connection.owner = nil
            if connection.state == .ready && evbuffer_get_length(connection.input) == 0 && !connection.verifiedBeforeNewCRL {
                return connection
            }
            connection.close()
        }
        return nil
    }

    /// Parks a connection whose exchange ended cleanly. Closes it instead when the key already holds `maxIdle`.
    func put(_ connection: UpstreamConnection, maxIdle: Int, idleTimeout: TimeSpan) {
        let list = idle[connection.key]
        guard connection.state == .ready, (list?.connections.count ?? 0) < maxIdle, evbuffer_get_length(connection.input) == 0 else {
            connection.close()
            return
        }
        connection.owner = self
        connection.setReadTimeout(idleTimeout)
        connection.enableRead(true)
        if let list {
            list.connections.append(connection)
        } else {
            let list = IdleList()
            list.connections.append(connection)
            idle[connection.key] = list
        }
        idleCount += 1
    }

    /// Idle connections per upstream (`host:port`), for the status page.
    var idleByUpstream: [String: Int] {
        var out: [String: Int] = [:]
        for (key, list) in idle where !list.connections.isEmpty {
            out["\(key.host):\(key.port)", default: 0] += list.connections.count
        }
        return out
    }

    func remove(_ connection: any UpstreamChannel) {
        guard let list = idle[connection.key], let i = list.connections.firstIndex(where: { $0 === connection }) else { return }
        list.connections.remove(at: i)
        idleCount -= 1
        dropIfEmpty(connection.key)
    }

    /// Past this many keys, a list that empties is dropped rather than kept for reuse (many hosts, few repeats).
    private static let maxKeptKeys = 64

    private func dropIfEmpty(_ key: PoolKey) {
        if idle.count > Self.maxKeptKeys, idle[key]?.connections.isEmpty == true { idle[key] = nil }
    }

    func retire(where shouldRetire: (UpstreamConnection) -> Bool) {
        for list in Array(idle.values) {
            for connection in list.connections where shouldRetire(connection) {
                remove(connection)
                connection.close()
            }
        }
    }

    func closeAll() {
        for list in idle.values {
            for connection in list.connections { connection.owner = nil; connection.close() }
        }
        idle.removeAll()
        idleCount = 0
    }

    func upstreamConnected(_ upstream: any UpstreamChannel) {}
    func upstreamWritable(_ upstream: any UpstreamChannel) {}

    func upstreamReadable(_ upstream: any UpstreamChannel) {
        // An idle server has nothing to say; bytes now mean the connection is out of step.
        remove(upstream)
        upstream.abort()
    }

    func upstreamEnded(_ upstream: any UpstreamChannel, _ event: UpstreamEvent) {
        remove(upstream)
        upstream.abort()
    }
}

extension PoolKey {
    /// Hashes only what is cheap (the TLS context, the port and the host's length); equality still compares every
    /// field, so a key is never shared across hosts, dialled addresses, identities or trust settings.
    func hash(into hasher: inout Hasher) {
        hasher.combine(context)
        hasher.combine(port)
        hasher.combine(host.utf8.count)
    }
}
