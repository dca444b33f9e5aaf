import Logging
import ProxyConfig
@testable import ProxyServer

/// Runs a proxy for `config` on its own port for the length of `body`, which is handed the port; the proxy
/// stops when `body` returns or throws.
func withRunningServer(_ config: ProxyConfiguration, _ body: (Int) throws -> Void) throws {
    let server = try ProxyServer(runtime: try ProxyRuntime(config: config), logger: Logger(label: "test"))
    try server.bind()
    server.start()
    defer { server.stop() }
    try body(server.port)
}
