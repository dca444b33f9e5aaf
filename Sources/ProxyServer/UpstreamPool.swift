import CEventTLS
import ProxyConfig

/// Idle upstream connections of one worker, by `PoolKey`, most recently used first. While a connection is idle
/// the pool is its delegate: anything it hears (the server closing, stray bytes, the idle timeout) retires it.
final class UpstreamPool: UpstreamConnectionDelegate {
    private var idle: [PoolKey: [UpstreamConnection]] = [:]
    private(set) var idleCount = 0

    /// An idle connection for `key`, if one is open. A connection with unread bytes (a server that said more
    /// than its response, not yet noticed) is closed rather than handed out.
    func take(_ key: PoolKey) -> UpstreamConnection? {
        while var list = idle[key], let connection = list.popLast() {
            idle[key] = list.isEmpty ? nil : list
            idleCount -= 1
            connection.delegate = nil
            if connection.state == .ready && evbuffer_get_length(connection.input) == 0 { return connection }
            connection.close()
        }
        return nil
    }

    /// Parks a connection whose exchange ended cleanly. Closes it instead when the key already holds `maxIdle`.
    func put(_ connection: UpstreamConnection, maxIdle: Int, idleTimeout: TimeSpan) {
        var list = idle[connection.key] ?? []
        guard connection.state == .ready, list.count < maxIdle, evbuffer_get_length(connection.input) == 0 else {
            connection.close()
            return
        }
        connection.delegate = self
        connection.setReadTimeout(idleTimeout)
        connection.enableRead(true)
        list.append(connection)
        idle[connection.key] = list
        idleCount += 1
    }

    func remove(_ connection: UpstreamConnection) {
        guard var list = idle[connection.key], let i = list.firstIndex(where: { $0 === connection }) else { return }
        list.remove(at: i)
        idle[connection.key] = list.isEmpty ? nil : list
        idleCount -= 1
    }

    /// Closes every idle connection for which `shouldRetire` holds (after a certificate switch or a reload).
    func retire(where shouldRetire: (UpstreamConnection) -> Bool) {
        for list in Array(idle.values) {
            for connection in list where shouldRetire(connection) {
                remove(connection)
                connection.close()
            }
        }
    }

    func closeAll() {
        for list in idle.values {
            for connection in list { connection.delegate = nil; connection.close() }
        }
        idle.removeAll()
        idleCount = 0
    }

    func upstreamConnected(_ upstream: UpstreamConnection) {}
    func upstreamWritable(_ upstream: UpstreamConnection) {}

    func upstreamReadable(_ upstream: UpstreamConnection) {
        // An idle server has nothing to say; bytes now mean the connection is out of step.
        remove(upstream)
        upstream.close()
    }

    func upstreamEvent(_ upstream: UpstreamConnection, _ event: UpstreamConnection.Event) {
        remove(upstream)
        upstream.close()
    }
}
