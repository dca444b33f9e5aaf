import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// What the admin endpoint reports on. Implemented by the server; everything runs on the main thread.
protocol AdminState: AnyObject {
    /// nil when healthy, else why not.
    func healthProblem() -> String?
    /// nil when ready, else why not.
    func notReadyReason() -> String?
    /// One line per identity with its certificate state, for `/readyz?verbose`.
    func identityReport() -> String
    func metricsText() -> String
    /// The status page (`GET /`) and its Content-Security-Policy.
    func statusPage() -> (html: String, policy: String)
}

/// The admin endpoint on the main thread's event base (libevent's evhttp): `/` (the status page), `/healthz`,
/// `/readyz`, `/metrics`.
/// Loopback clients only, unless `[admin] allow_clients` names others.
final class AdminServer {
    private let http: OpaquePointer
    private let settings: AdminSettings
    private weak var state: AdminState?
    private(set) var port = 0
    /// The status page is rendered at most once a second, on the main thread, never on a worker.
    private var cachedPage: (second: Int, html: String, policy: String)?

    /// Binds `settings.listen`, or accepts on a copy of `inherited` (a socket handed over by a supervisor).
    init(base: OpaquePointer, settings: AdminSettings, state: AdminState, inherited: Int32? = nil) throws {
        guard let http = evhttp_new(base) else { throw ServerError.eventLoop("evhttp_new failed") }
        self.http = http
        self.settings = settings
        self.state = state
        evhttp_set_allowed_methods(http, UInt16(EVHTTP_REQ_GET.rawValue | EVHTTP_REQ_HEAD.rawValue))
        evhttp_set_timeout(http, 10)
        // Every stored property is set, so deinit runs if this throws: it alone frees `http`.
        let bound: OpaquePointer?
        if let inherited {
            let fd = fcntl(inherited, F_DUPFD_CLOEXEC, 3)
            if fd >= 0 { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
            bound = fd >= 0 ? evhttp_accept_socket_with_handle(http, fd) : nil
            if bound == nil && fd >= 0 { close(fd) }
        } else {
            bound = evhttp_bind_socket_with_handle(http, settings.listen.host, UInt16(settings.listen.port))
        }
        guard let bound else {
            throw ServerError.bind(settings.listen.description, errno: mtls_errno(), role: "[admin] listen")
        }
        port = SocketAddress.localPort(of: evhttp_bound_socket_get_fd(bound))
        evhttp_set_gencb(http, adminRequestCallback, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit { evhttp_free(http) }

    fileprivate func handle(_ request: OpaquePointer) {
        guard let state else {
            reply(request, 503, "Service Unavailable", "shutting down\n")
            return
        }
        if !clientAllowed(request) {
            reply(request, 403, "Forbidden", "not in admin.allow_clients\n")
            return
        }
        let uri = evhttp_request_get_uri(request).map { String(cString: $0) } ?? "/"
        let path = uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? uri
        switch path {
        case "/healthz":
            if let problem = state.healthProblem() {
                reply(request, 503, "Service Unavailable", "unhealthy: \(problem)\n")
            } else {
                reply(request, 200, "OK", "ok\n")
            }
        case "/readyz":
            let verbose = ReadinessReport.wantsVerbose(query: uri.split(separator: "?", maxSplits: 1).dropFirst().first.map(String.init))
            let details = verbose ? state.identityReport() : ""
            if let reason = state.notReadyReason() {
                reply(request, 503, "Service Unavailable", "not ready: \(reason)\n" + details)
            } else {
                reply(request, 200, "OK", "ready\n" + details)
            }
        case "/metrics":
            reply(request, 200, "OK", state.metricsText(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        case "/":
            let second = monotonicMillis() / 1000
            if cachedPage?.second != second {
                let page = state.statusPage()
                cachedPage = (second, page.html, page.policy)
            }
            let page = cachedPage!
            reply(request, 200, "OK", page.html, contentType: "text/html; charset=utf-8", extraHeaders: [
                ("Content-Security-Policy", page.policy), ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"),
            ])
        default:
            reply(request, 404, "Not Found", "the admin endpoint serves /, /healthz, /readyz and /metrics\n")
        }
    }

    private func clientAllowed(_ request: OpaquePointer) -> Bool {
        guard let connection = evhttp_request_get_connection(request) else { return false }
        var address: UnsafeMutablePointer<CChar>?
        var port: UInt16 = 0
        evhttp_connection_get_peer(connection, &address, &port)
        guard let address, let ip = IPAddress(String(cString: address)) else { return false }
        return ip.isLoopback || settings.allowClients.contains { $0.contains(ip) }
    }

    private func reply(_ request: OpaquePointer, _ code: Int32, _ reason: String, _ body: String,
                       contentType: String = "text/plain; charset=utf-8", extraHeaders: [(String, String)] = []) {
        let headers = evhttp_request_get_output_headers(request)
        evhttp_add_header(headers, "Content-Type", contentType)
        evhttp_add_header(headers, "Cache-Control", "no-store")
        for (name, value) in extraHeaders { evhttp_add_header(headers, name, value) }
        let buffer = evbuffer_new()
        let bytes = Array(body.utf8)
        bytes.withUnsafeBytes { _ = evbuffer_add(buffer, $0.baseAddress, $0.count) }
        evhttp_send_reply(request, code, reason, buffer)
        evbuffer_free(buffer)
    }
}

private func adminRequestCallback(_ request: OpaquePointer?, _ ctx: UnsafeMutableRawPointer?) {
    guard let request else { return }
    Unmanaged<AdminServer>.fromOpaque(ctx!).takeUnretainedValue().handle(request)
}
