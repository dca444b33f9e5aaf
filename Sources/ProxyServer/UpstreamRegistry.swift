/// The upstream connections a worker has open (HTTP/1.1 ones and the transports under its HTTP/2 connections),
/// pooled or serving an exchange: each lives here from its
/// start until it closes (`UpstreamConnection.close`, the one place that unregisters it), so that no connection
/// is left reading for an owner that went. Apart from the worker so that what closing does to it can be checked
/// without an event loop running.
final class UpstreamRegistry {
    private var open: [ObjectIdentifier: UpstreamConnection] = [:]

    /// A connection is starting.
    func opened(_ connection: UpstreamConnection) {
        open[ObjectIdentifier(connection)] = connection
    }

    /// A connection closed: it leaves the registry, and is returned (once) to be kept until the loop turn ends.
    func closed(_ connection: UpstreamConnection) -> UpstreamConnection? {
        open.removeValue(forKey: ObjectIdentifier(connection))
    }

    func contains(_ connection: UpstreamConnection) -> Bool { open[ObjectIdentifier(connection)] != nil }
    var count: Int { open.count }
    var isEmpty: Bool { open.isEmpty }
    var all: [UpstreamConnection] { Array(open.values) }
}
