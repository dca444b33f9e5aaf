import ArgumentParser
import Logging
import ProxyConfig
import ProxyServer

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve: listen for plain HTTP and forward over TLS.")

    @OptionGroup var options: ConfigOption

    func run() throws {
        ProxyServer.prepareProcess()
        let runtime = try options.loadRuntime()
        let config = runtime.config
        LoggingSystem.bootstrap(OperationalLogHandler.factory(settings: config.log))
        let logger = Logger(label: "mtls-proxy")
        let path = options.path
        let environment = options.environment
        let server: ProxyServer
        do {
            // Reloads parse each distinct config text once (TOMLKit never frees a parsed document).
            let configs = ParsedConfigCache()
            server = try ProxyServer(runtime: runtime, logger: logger, loader: {
                try configs.load(file: path, environment: environment)
            })
            try server.bind()
        } catch {
            printError("mtls-proxy: \(error)")
            throw ExitCode(1)
        }
        var listen = config.proxy.listen
        listen.port = server.port
        server.logIdentities(runtime)
        logger.info("mtls-proxy listening on \(listen) with \(server.workerCount) worker(s), \(config.routes.count) route(s), config \(config.file)")
        for (listener, port) in zip(config.listeners, server.listenerPorts) {
            var address = listener.listen
            address.port = port
            logger.info("\(listener.configKey) listening on \(address), sending every request to \(listener.upstreamURL)")
        }
        if let admin = config.admin, let port = server.adminPort {
            var address = admin.listen
            address.port = port
            logger.info("admin endpoint on http://\(address) (/ the status page, /healthz, /readyz, /metrics)")
        }
        server.run()
        logger.info("mtls-proxy stopped")
    }
}
