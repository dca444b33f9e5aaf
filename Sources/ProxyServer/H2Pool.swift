import CEventTLS
import ProxyConfig
import TLS

/// A worker's HTTP/2 upstream connections, by `PoolKey`: an exchange takes a stream on a connection of its key
/// with a free stream (within the server's SETTINGS_MAX_CONCURRENT_STREAMS), else on a new connection up to the
/// route's `h2_connections`, else waits in a bounded queue (answered when a stream frees, or failed by its
/// timer). Keys hold the identity's TLS context and the SNI name: a connection is never shared across them.
final class H2Pool {
    private var connections: [PoolKey: [H2UpstreamConnection]] = [:]
    private var waiting: [PoolKey: [H2UpstreamStream]] = [:]
    unowned(unsafe) let worker: Worker

    /// Exchanges waiting per key for a stream; beyond it they are refused (503). A debug build's test switch
    /// lowers it (`TestFaults.smallH2Queue`).
    static let maxWaitingPerKey = TestFaults.smallH2Queue ? 4 : 1024

    init(worker: Worker) {
        self.worker = worker
    }

    var connectionCount: Int { connections.values.reduce(0) { $0 + $1.count } }

    /// `protocol = "auto"` keys whose server selected HTTP/1.1 in ALPN: their exchanges go over HTTP/1.1.
    private var speaksHTTP11: Set<PoolKey> = []
    func learnHTTP11(_ key: PoolKey) { speaksHTTP11.insert(key) }
    func knownHTTP11(_ key: PoolKey) -> Bool { speaksHTTP11.contains(key) }

    enum Placement { case attached, queued, refused, failedToOpen }

    /// Per key, the connection whose server last refused a stream (REFUSED_STREAM): the retry of that exchange,
    /// which follows at once, goes to another connection.
    private var refusedBy: [PoolKey: ObjectIdentifier] = [:]

    /// The server of `connection` refused a stream (it did not process it): its retry goes elsewhere.
    func streamRefused(on connection: H2UpstreamConnection) {
        refusedBy[connection.key] = ObjectIdentifier(connection)
    }

    /// Puts `stream` on a connection of its key, opening one when allowed. A retry (`stream.isRetry`) after a
    /// refused stream avoids the connection that refused it: another with a free stream, else a new one within
    /// `h2_connections`; only when neither is possible does it go back to that one rather than wait.
    func place(_ stream: H2UpstreamStream) -> Placement {
        let key = stream.key
        for stale in connections[key] ?? [] { _ = stale.retireIfVerifiedBeforeNewCRL() }
        let list = connections[key] ?? []
        // The retry follows the refusal at once (in the same turn): any later exchange finds the mark gone.
        let refusing = refusedBy.removeValue(forKey: key)
        let avoided = stream.isRetry ? refusing : nil
        if let free = list.first(where: { $0.hasCapacity && ObjectIdentifier($0) != avoided }) {
            free.attach(stream)
            return .attached
        }
        if list.count >= stream.maxConnections, let avoided, let last = list.first(where: { ObjectIdentifier($0) == avoided }),
           last.hasCapacity {
            last.attach(stream)
            return .attached
        }
        if list.count < stream.maxConnections {
            guard let transport = worker.openUpstream(key: key, context: stream.context, connectTimeout: stream.timeouts.connect,
                                                      allowPrivate: stream.allowPrivate) else { return .failedToOpen }
            let connection = H2UpstreamConnection(key: key, transport: transport, worker: worker, routeLabel: stream.routeLabel,
                                                  idleTimeout: stream.timeouts.idle, settingsTimeout: stream.timeouts.connect,
                                                  pingInterval: stream.timeouts.h2PingInterval, pingTimeout: stream.timeouts.h2PingTimeout)
            connection.onClose = { [unowned self] closed in self.remove(closed) }
            connection.onCapacity = { [unowned self] freed in self.serveWaiting(freed.key) }
            connection.onOverflow = { [unowned self] stream in self.replace(stream) }
            connections[key, default: []].append(connection)
            connection.attach(stream)
            return .attached
        }
        guard (waiting[key]?.count ?? 0) < Self.maxWaitingPerKey else { return .refused }
        waiting[key, default: []].append(stream)
        stream.setReadTimeout(stream.timeouts.connect)
        return .queued
    }

    /// A stream a connection gave back (the server takes fewer streams than were attached to it).
    private func replace(_ stream: H2UpstreamStream) {
        switch place(stream) {
        case .attached, .queued: break
        case .refused: stream.connectionFailed(.queueFull)
        case .failedToOpen:
            stream.connectionFailed(.protocolError("no connection to \(stream.key.host):\(stream.key.port) could be opened"))
        }
    }

    /// A queued stream whose exchange ended (its client left, its wait timed out).
    func forget(_ stream: H2UpstreamStream) {
        waiting[stream.key]?.removeAll { $0 === stream }
        if waiting[stream.key]?.isEmpty == true { waiting[stream.key] = nil }
    }

    private func serveWaiting(_ key: PoolKey) {
        while var queue = waiting[key], !queue.isEmpty,
              let free = connections[key]?.first(where: { $0.hasCapacity }) {
            let stream = queue.removeFirst()
            waiting[key] = queue.isEmpty ? nil : queue
            free.attach(stream)
        }
    }

    private func remove(_ connection: H2UpstreamConnection) {
        if refusedBy[connection.key] == ObjectIdentifier(connection) { refusedBy[connection.key] = nil }
        connections[connection.key]?.removeAll { $0 === connection }
        if connections[connection.key]?.isEmpty == true { connections[connection.key] = nil }
        // Exchanges that waited may now open a connection of their own.
        if let queue = waiting[connection.key], !queue.isEmpty {
            waiting[connection.key] = nil
            for stream in queue {
                switch place(stream) {
                case .attached, .queued: break
                case .refused: stream.connectionFailed(.queueFull)
                case .failedToOpen: stream.connectionFailed(.protocolError("no connection to \(connection.key.host):\(connection.key.port) could be opened"))
                }
            }
        }
    }

    /// Closes every connection (the worker stops).
    func closeAll() {
        for list in connections.values { for connection in list { connection.close() } }
        connections.removeAll()
    }
}
