import ProxyConfig
import Reports
import StatusPage
import TLS

extension CertificateFacts {
    public init(_ certificate: Certificate) {
        self.init(subject: certificate.subject, issuer: certificate.issuer, serial: certificate.serialHex,
                  notBefore: certificate.notBefore, notAfter: certificate.notAfter, sha256: certificate.sha256Fingerprint)
    }
}

/// Builds the reports of a loaded runtime: the identities and local CA of `check`/`certs --format json`, and the
/// status page's model (the admin listener's `GET /`, and `certs --html` without live figures).
public enum StatusReport {
    public static func identity(_ runtime: ProxyRuntime, _ identity: Identity, now: Int, warnDays: Int) -> IdentityReport {
        let credentials = runtime.credentials[identity.name] ?? []
        let validity = credentials.map(\.validity)
        let status = runtime.status(identity: identity.name, at: now, warnDays: warnDays)
        let certificates = credentials.enumerated().map { i, credential in
            let state = CertificateReport.state(of: i, validity, status: status, now: now)
            return CertificateReport(index: i + 1, state: state, facts: CertificateFacts(credential.leaf),
                                     file: credential.source.cert, takesOverAt: takeover(i, validity, identity, now), now: now)
        }
        return IdentityReport(name: identity.name, prefer: identity.prefer.rawValue, status: status, certificates: certificates)
    }

    private static func takeover(_ i: Int, _ validity: [CertificateValidity], _ identity: Identity, _ now: Int) -> Int? {
        validity[i].notBefore > now ? ExpiryCalendar.takeover(of: i, validity, prefer: identity.prefer, after: now) : nil
    }

    public static func localCA(_ runtime: ProxyRuntime, now: Int) -> LocalCAReport? {
        guard let intercept = runtime.config.intercept else { return nil }
        return LocalCAReport(certFile: intercept.caCert, keyFile: intercept.caKey,
                             facts: runtime.localCA.map { CertificateFacts($0.certificate) },
                             error: runtime.localCA == nil ? "not loaded" : nil, now: now)
    }

    /// How a route's requests leave the proxy.
    static func egress(_ route: Route) -> String {
        if case .deny = route.action { return "none (denied)" }
        if let proxy = route.egress.corporateProxy { return "through the corporate proxy \(proxy)" }
        return route.connect.map { "direct, dialling \($0)" } ?? "direct"
    }

    /// The status page's model of `runtime` at `now`; `live` is nil for the offline report.
    public static func model(_ runtime: ProxyRuntime, now: Int, live: LiveFigures?) -> StatusModel {
        let config = runtime.config
        let warnDays = config.proxy.warnDays
        let panels = config.identities.map { identity -> IdentityPanel in
            let credentials = runtime.credentials[identity.name] ?? []
            let validity = credentials.map(\.validity)
            let routes = config.routes.filter { $0.action == .mtls(identity: identity.name) }.map(\.label)
            return IdentityPanel(report: self.identity(runtime, identity, now: now, warnDays: warnDays),
                                 keys: credentials.map { credential in
                                     var key = KeyLocation(describing: credential.source.key)
                                     if live != nil { key.available = credential.key.tokenSigner?.isAvailable }
                                     return key
                                 }, routes: routes,
                                 takeovers: credentials.indices.map { takeover($0, validity, identity, now) })
        }
        return StatusModel(generatedAt: now, config: config.file, warnDays: warnDays, identities: panels,
                           routes: config.routes.map { RouteRow(report: RouteReport($0), egress: egress($0)) },
                           localCA: localCA(runtime, now: now), live: live)
    }

    /// The SHA-256 of the page's style, base64, for its Content-Security-Policy.
    public static let styleHash = StatusPage.base64(MessageDigest.sha256(Array(StatusPage.stylesheet.utf8)))

    public static func page(_ runtime: ProxyRuntime, now: Int, live: LiveFigures?) -> String {
        StatusPage.render(model(runtime, now: now, live: live), styleHash: styleHash)
    }
}
