import ArgumentParser
import Logging
import ProxyConfig
import ProxyServer

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve: listen for plain HTTP and forward over TLS.")

    @OptionGroup var options: ConfigOption

    func run() throws {
        ProxyServer.prepareProcess()
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .info
            return handler
        }
        let logger = Logger(label: "mtls-proxy")
        let runtime = try options.loadRuntime()
        let path = options.path
        let server = ProxyServer(runtime: runtime, logger: logger, loader: { generation in
            try ProxyRuntime(config: try ConfigLoader.load(file: path), generation: generation)
        })
        do {
            try server.bind()
        } catch {
            printError("mtls-proxy: \(error)")
            throw ExitCode(1)
        }
        let config = runtime.config
        var listen = config.proxy.listen
        listen.port = server.port
        server.logIdentities(runtime)
        logger.info("mtls-proxy listening on \(listen) with \(server.workerCount) worker(s), \(config.routes.count) route(s), config \(config.file)")
        server.run()
        logger.info("mtls-proxy stopped")
    }
}
